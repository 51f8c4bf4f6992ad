//! Progress of a deploy or restart as the API reports it: the image pull, then the rollout.

use crate::{proto, runtime::image::PullProgress};

#[derive(Debug)]
pub enum Progress {
    Pull(PullProgress),
    /// A rollout step ("replica 0: started web-x1 to replace web-y2; waiting ...").
    Rollout(String),
    /// A step of `hivemind apply` ("created volume data").
    Apply(String),
}

pub fn to_proto(progress: &Progress) -> proto::PullProgress {
    match progress {
        Progress::Pull(pull) => pull_to_proto(pull),
        Progress::Apply(message) => proto::PullProgress {
            phase: "apply".into(),
            detail: message.clone(),
            done: 0,
            total: 0,
        },
        Progress::Rollout(message) => proto::PullProgress {
            phase: "rollout".into(),
            detail: message.clone(),
            done: 0,
            total: 0,
        },
    }
}

fn pull_to_proto(progress: &PullProgress) -> proto::PullProgress {
    let (phase, detail, done, total) = match progress {
        PullProgress::Resolving { image } => ("resolve", format!("resolving {image}"), 0, 0),
        PullProgress::Resolved {
            image,
            layers,
            total_bytes,
            ..
        } => (
            "resolve",
            format!("{image}: {layers} layers"),
            0,
            *total_bytes,
        ),
        PullProgress::Layer {
            index,
            digest,
            done,
            total,
            cached,
        } => {
            let short = digest
                .trim_start_matches("sha256:")
                .get(..12)
                .unwrap_or(digest);
            let what = if *cached { "present" } else { "downloading" };
            (
                "layer",
                format!("layer {} {short} {what}", index + 1),
                *done,
                *total,
            )
        }
        PullProgress::Unpacking {
            index,
            layers,
            cached,
            ..
        } => {
            let what = if *cached { "present" } else { "unpacking" };
            (
                "unpack",
                format!("layer {}/{layers} {what}", index + 1),
                0,
                0,
            )
        }
        PullProgress::Done { image, pulled, .. } => {
            let what = if *pulled { "pulled" } else { "already present" };
            ("done", format!("{image} {what}"), 0, 0)
        }
    };
    proto::PullProgress {
        phase: phase.into(),
        detail,
        done,
        total,
    }
}
