//! A container's process and its stop and health settings: the image's config with the app's
//! overrides, by Docker's rules.
//!
//! - argv: `--entrypoint` replaces the image's `ENTRYPOINT` and drops its `CMD`; the arguments
//!   after `--` replace `CMD`; the result is `ENTRYPOINT + CMD`.
//! - the working directory: `--workdir`, else `WORKDIR`, else `/`;
//! - the user: `--user`, else `USER`, resolved in the image's `/etc/passwd` and `/etc/group`
//!   (see [`crate::runtime::user`]); `HOME` from its passwd entry unless the env sets it;
//! - env: `PATH` (Docker's default), `HOSTNAME`, the image's env, the app's env, in that order
//!   of precedence from low to high;
//! - the stop signal: `--stop-signal`, else `STOPSIGNAL`, else `SIGTERM`;
//! - the health check: a `--health-*` one, else the image's `HEALTHCHECK` (with Docker's
//!   defaults for what it leaves out), none with `--no-healthcheck` or `HEALTHCHECK NONE`.
//!
//! Pure, so every rule is unit-tested.

use std::collections::BTreeMap;

use crate::{
    model::{AppSpec, HealthCheck, Probe},
    runtime::{
        image::{ImageConfig, ImageHealthcheck},
        user::{Accounts, ExecUser, UserError},
    },
    validate,
};

/// PATH for images that set none (Docker's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Docker's defaults for a `HEALTHCHECK` that leaves them out.
const IMAGE_CHECK_INTERVAL_MS: u64 = 30_000;
const IMAGE_CHECK_TIMEOUT_MS: u64 = 30_000;
const IMAGE_CHECK_RETRIES: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    #[error("image {image}: {source}")]
    User {
        image: String,
        #[source]
        source: UserError,
    },
    #[error("image {image} has neither an entrypoint nor a command to run")]
    NoCommand { image: String },
    #[error("image {image}: STOPSIGNAL {signal:?} is not a signal")]
    StopSignal { image: String, signal: String },
    #[error("image {image}: HEALTHCHECK {test:?} is not CMD, CMD-SHELL or NONE")]
    Healthcheck { image: String, test: Vec<String> },
}

/// What runs in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub args: Vec<String>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    pub cwd: String,
    pub user: ExecUser,
    /// How the user is shown, e.g. `www (uid 1000, gid 1000, groups 50,2000)`.
    pub user_display: String,
    /// The signal a stop sends first, by name.
    pub stop_signal: String,
}

/// The process of a container of `app` made from the image `image` (whose config is
/// `config` and whose accounts are `accounts`), with hostname `id`.
pub fn process(
    app: &AppSpec,
    image: &str,
    config: &ImageConfig,
    accounts: &Accounts,
    id: &str,
) -> Result<Process, ProcessError> {
    let (entrypoint, cmd) = match &app.entrypoint {
        Some(entrypoint) => (entrypoint.clone(), Vec::new()),
        None => (config.entrypoint.clone(), config.cmd.clone()),
    };
    let cmd = app.command.clone().unwrap_or(cmd);
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(ProcessError::NoCommand {
            image: image.to_owned(),
        });
    }
    let spec = app.user.as_deref().unwrap_or(&config.user);
    let user = accounts
        .resolve(spec)
        .map_err(|source| ProcessError::User {
            image: image.to_owned(),
            source,
        })?;
    let cwd = app
        .workdir
        .clone()
        .or_else(|| (!config.working_dir.is_empty()).then(|| config.working_dir.clone()))
        .unwrap_or_else(|| "/".to_owned());
    let user_display = describe_user(spec, &user);
    let stop_signal = match &app.stop_signal {
        Some(signal) => signal.clone(),
        None if config.stop_signal.trim().is_empty() => "SIGTERM".to_owned(),
        None => validate::signal(&config.stop_signal).map_err(|_| ProcessError::StopSignal {
            image: image.to_owned(),
            signal: config.stop_signal.clone(),
        })?,
    };
    Ok(Process {
        env: merge_env(&config.env, &app.env, id, &user.home),
        args,
        cwd,
        user,
        user_display,
        stop_signal,
    })
}

fn describe_user(spec: &str, user: &ExecUser) -> String {
    let name = if spec.trim().is_empty() {
        "root"
    } else {
        spec.trim()
    };
    let groups = if user.additional_gids.is_empty() {
        String::new()
    } else {
        let groups: Vec<String> = user.additional_gids.iter().map(u32::to_string).collect();
        format!(", groups {}", groups.join(","))
    };
    format!("{name} (uid {}, gid {}{groups})", user.uid, user.gid)
}

/// Defaults, then the image's env, then the app's; later keys override earlier ones.
fn merge_env(
    image_env: &[String],
    app_env: &BTreeMap<String, String>,
    id: &str,
    home: &str,
) -> Vec<String> {
    let mut merged: Vec<(String, String)> = Vec::new();
    let mut set = |key: &str, value: &str| {
        if let Some(slot) = merged.iter_mut().find(|(k, _)| k == key) {
            value.clone_into(&mut slot.1);
        } else {
            merged.push((key.to_owned(), value.to_owned()));
        }
    };
    set("PATH", DEFAULT_PATH);
    set("HOSTNAME", id);
    if !home.is_empty() {
        set("HOME", home);
    }
    for pair in image_env {
        if let Some((k, v)) = pair.split_once('=') {
            set(k, v);
        }
    }
    for (k, v) in app_env {
        set(k, v);
    }
    merged
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// The number of the signal a stop sends first (`SIGTERM` for an unknown name).
pub fn signal_number(name: &str) -> u32 {
    const SIGTERM: u32 = 15;
    validate::signal_number(name).unwrap_or(SIGTERM)
}

/// Fills in what the image contributes to an app at deploy (or update) time: its
/// `HEALTHCHECK` when no check was given (and checks are not switched off). A check taken
/// from an earlier image is replaced. Checks the image's values, so a bad one fails the
/// deploy rather than a container.
pub fn adopt_image_settings(
    app: &mut AppSpec,
    image: &str,
    config: &ImageConfig,
) -> Result<(), ProcessError> {
    if app.health_from_image || app.no_healthcheck {
        app.health = None;
    }
    app.health_from_image = false;
    if app.health.is_none()
        && !app.no_healthcheck
        && let Some(check) = &config.healthcheck
    {
        app.health = image_check(image, check)?;
        app.health_from_image = app.health.is_some();
    }
    if !config.stop_signal.trim().is_empty() && validate::signal(&config.stop_signal).is_err() {
        return Err(ProcessError::StopSignal {
            image: image.to_owned(),
            signal: config.stop_signal.clone(),
        });
    }
    Ok(())
}

/// The image's `HEALTHCHECK` as a check; `None` for `NONE` or an empty test (inherit: none).
fn image_check(image: &str, check: &ImageHealthcheck) -> Result<Option<HealthCheck>, ProcessError> {
    let probe = match check.test.split_first() {
        None => return Ok(None),
        Some((kind, _)) if kind == "NONE" => return Ok(None),
        Some((kind, rest)) if kind == "CMD-SHELL" && !rest.is_empty() => Probe::Cmd {
            command: rest.join(" "),
        },
        Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => Probe::Exec {
            args: rest.to_vec(),
        },
        Some(_) => {
            return Err(ProcessError::Healthcheck {
                image: image.to_owned(),
                test: check.test.clone(),
            });
        }
    };
    let ms = |ns: u64, default: u64| {
        if ns == 0 {
            default
        } else {
            (ns / 1_000_000).max(1)
        }
    };
    Ok(Some(HealthCheck {
        probe,
        interval_ms: ms(check.interval, IMAGE_CHECK_INTERVAL_MS),
        timeout_ms: ms(check.timeout, IMAGE_CHECK_TIMEOUT_MS),
        retries: if check.retries == 0 {
            IMAGE_CHECK_RETRIES
        } else {
            check.retries
        },
        start_period_ms: check.start_period / 1_000_000,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/bin/entry".into()],
            cmd: vec!["serve".into(), "--port=80".into()],
            env: vec!["PATH=/bin".into(), "B=image".into(), "C=1".into()],
            working_dir: "/srv".into(),
            user: "www".into(),
            ..ImageConfig::default()
        }
    }

    fn accounts() -> Accounts {
        Accounts::parse(
            "root:x:0:0::/root:/bin/sh\nwww:x:1000:1000::/var/www:/bin/sh\n",
            "root:x:0:\nwww:x:1000:\nstaff:x:50:www\n",
        )
    }

    fn app() -> AppSpec {
        AppSpec {
            name: "web".into(),
            env: BTreeMap::from([("B".to_owned(), "app".to_owned())]),
            ..AppSpec::default()
        }
    }

    #[test]
    fn the_image_config_is_honoured() {
        let p = process(&app(), "img", &image(), &accounts(), "web-1").expect("process");
        assert_eq!(p.args, ["/bin/entry", "serve", "--port=80"]);
        assert_eq!(p.cwd, "/srv");
        assert_eq!((p.user.uid, p.user.gid), (1000, 1000));
        assert_eq!(p.user.additional_gids, [50]);
        assert_eq!(p.user_display, "www (uid 1000, gid 1000, groups 50)");
        assert_eq!(
            p.env,
            [
                "PATH=/bin",
                "HOSTNAME=web-1",
                "HOME=/var/www",
                "B=app",
                "C=1"
            ]
        );
    }

    #[test]
    fn deploy_flags_override_the_image() {
        let mut a = app();
        a.entrypoint = Some(vec!["/bin/sh".into(), "-c".into()]);
        a.command = Some(vec!["echo hi".into()]);
        a.workdir = Some("/tmp".into());
        a.user = Some("1000:staff".into());
        a.env.insert("HOME".into(), "/data".into());
        let p = process(&a, "img", &image(), &accounts(), "web-1").expect("process");
        assert_eq!(p.args, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(p.cwd, "/tmp");
        assert_eq!((p.user.uid, p.user.gid), (1000, 50));
        assert_eq!(p.user.additional_gids, Vec::<u32>::new());
        assert!(p.env.contains(&"HOME=/data".to_owned()), "{:?}", p.env);
        // An entrypoint drops the image's CMD; an empty one runs the command alone.
        let mut a = app();
        a.entrypoint = Some(vec!["/bin/other".into()]);
        let p = process(&a, "img", &image(), &accounts(), "id").expect("process");
        assert_eq!(p.args, ["/bin/other"]);
        a.entrypoint = Some(Vec::new());
        a.command = Some(vec!["/bin/true".into()]);
        let p = process(&a, "img", &image(), &accounts(), "id").expect("process");
        assert_eq!(p.args, ["/bin/true"]);
    }

    #[test]
    fn unknown_users_and_missing_commands_are_errors() {
        let mut a = app();
        a.user = Some("nobody".into());
        assert_eq!(
            process(&a, "img", &image(), &accounts(), "id")
                .expect_err("unknown user")
                .to_string(),
            "image img: user \"nobody\" is not defined in the image's /etc/passwd"
        );
        let bare = ImageConfig::default();
        assert!(matches!(
            process(&app(), "img", &bare, &accounts(), "id"),
            Err(ProcessError::NoCommand { .. })
        ));
    }

    #[test]
    fn the_image_healthcheck_and_stop_signal_apply_unless_overridden() {
        let mut config = image();
        config.healthcheck = Some(ImageHealthcheck {
            test: vec!["CMD-SHELL".into(), "wget -q -O- localhost".into()],
            interval: 2_000_000_000,
            ..ImageHealthcheck::default()
        });
        config.stop_signal = "SIGUSR1".into();
        let mut a = app();
        adopt_image_settings(&mut a, "img", &config).expect("settings");
        let check = a.health.clone().expect("the image's check");
        assert_eq!(
            check.probe,
            Probe::Cmd {
                command: "wget -q -O- localhost".into()
            }
        );
        assert_eq!(
            (check.interval_ms, check.timeout_ms, check.retries),
            (2000, 30_000, 3)
        );
        assert!(a.health_from_image);
        let p = process(&a, "img", &config, &accounts(), "id").expect("process");
        assert_eq!(p.stop_signal, "SIGUSR1");
        assert_eq!(signal_number(&p.stop_signal), 10);

        // CMD form runs without a shell; NONE switches it off; a new image replaces it.
        config.healthcheck = Some(ImageHealthcheck {
            test: vec!["CMD".into(), "/bin/check".into(), "-q".into()],
            ..ImageHealthcheck::default()
        });
        adopt_image_settings(&mut a, "img", &config).expect("settings");
        assert_eq!(
            a.health.as_ref().map(|h| h.probe.clone()),
            Some(Probe::Exec {
                args: vec!["/bin/check".into(), "-q".into()]
            })
        );
        config.healthcheck = Some(ImageHealthcheck {
            test: vec!["NONE".into()],
            ..ImageHealthcheck::default()
        });
        adopt_image_settings(&mut a, "img", &config).expect("settings");
        assert_eq!(a.health, None);

        // --no-healthcheck and a given check win over the image's.
        config.healthcheck = Some(ImageHealthcheck {
            test: vec!["CMD".into(), "/bin/check".into()],
            ..ImageHealthcheck::default()
        });
        let mut off = app();
        off.no_healthcheck = true;
        adopt_image_settings(&mut off, "img", &config).expect("settings");
        assert_eq!(off.health, None);
        let mut given = app();
        given.health = Some(HealthCheck {
            probe: Probe::Tcp { port: 80 },
            interval_ms: 1000,
            timeout_ms: 500,
            retries: 1,
            start_period_ms: 0,
        });
        given.stop_signal = Some("SIGQUIT".into());
        adopt_image_settings(&mut given, "img", &config).expect("settings");
        assert_eq!(
            given.health.as_ref().map(|h| h.probe.clone()),
            Some(Probe::Tcp { port: 80 })
        );
        let p = process(&given, "img", &config, &accounts(), "id").expect("process");
        assert_eq!(signal_number(&p.stop_signal), 3);
        assert_eq!(
            process(&app(), "img", &image(), &accounts(), "id")
                .expect("process")
                .stop_signal,
            "SIGTERM"
        );

        config.stop_signal = "SIGNOPE".into();
        assert!(matches!(
            adopt_image_settings(&mut app(), "img", &config),
            Err(ProcessError::StopSignal { .. })
        ));
    }
}
