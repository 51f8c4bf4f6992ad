//! A container's log file, one owner for its format: every line of output a record in the CRI
//! logging format (`2026-12-07T10:00:00.123456789Z stdout F the line`), the format kubelet and
//! containerd's CRI write and log shippers (Fluent Bit, Promtail, Vector) read.
//!
//! The writer is this binary run by containerd's shim as a logging binary (`binary://` stdio):
//! the shim hands it the container's stdout and stderr pipes, so output is stamped as it is
//! written and keeps flowing while the agent restarts. The reader turns records back into the
//! output, with or without the stamps, from a given time on.

use std::{
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Read, Write as _},
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
    process::ExitCode,
    sync::Mutex,
};

use chrono::{DateTime, SecondsFormat, Utc};

/// The subcommand the shim runs: `hivemind log-writer PATH` (a `binary://` URI's single query
/// pair becomes these two arguments).
pub const WRITER_SUBCOMMAND: &str = "log-writer";

/// Longer lines are split into partial records (`P`), as Docker and the CRI split them.
const MAX_LINE: usize = 16 * 1024;

/// The stdio URI that makes the shim run `writer` to append `log`'s records.
pub fn writer_uri(writer: &Path, log: &Path) -> String {
    let mut uri = url::Url::parse("binary:///").unwrap_or_else(|_| unreachable!("static URI"));
    uri.set_path(&writer.to_string_lossy());
    uri.query_pairs_mut()
        .append_pair(WRITER_SUBCOMMAND, &log.to_string_lossy());
    uri.into()
}

/// The logging binary's main: copies the container's stdout (fd 3) and stderr (fd 4) into
/// `path` as records until both close, after signalling readiness on fd 5 (containerd's
/// logging-binary protocol).
pub fn run_writer(path: &Path) -> ExitCode {
    // SAFETY: the shim starts this process with exactly these descriptors open for it (the
    // stdout and stderr pipes and the readiness pipe); nothing else in this process uses them,
    // so each is owned once, here.
    let (stdout, stderr, ready) = unsafe {
        (
            OwnedFd::from_raw_fd(3),
            OwnedFd::from_raw_fd(4),
            OwnedFd::from_raw_fd(5),
        )
    };
    let sink = match OpenOptions::new().create(true).append(true).open(path) {
        Ok(file) => Mutex::new(file),
        Err(err) => {
            eprintln!("hivemind log-writer: cannot open {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    };
    // Closing the readiness pipe tells the shim to start the container.
    drop(ready);
    std::thread::scope(|scope| {
        scope.spawn(|| copy_records("stdout", File::from(stdout), &sink));
        copy_records("stderr", File::from(stderr), &sink);
    });
    ExitCode::SUCCESS
}

/// Reads `input` to its end, appending one record per line. Never stops early: a container
/// whose log reader went away would get SIGPIPE on its next write.
fn copy_records(stream: &str, input: impl Read, sink: &Mutex<File>) {
    let mut reader = BufReader::with_capacity(64 * 1024, input);
    let mut line = Vec::with_capacity(1024);
    let mut record = Vec::with_capacity(1024);
    loop {
        line.clear();
        match reader
            .by_ref()
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
        record.clear();
        encode(&mut record, Utc::now(), stream, &line);
        // One write per record, so the two streams' records never interleave. A full disk
        // loses records, not the container.
        if let Ok(mut file) = sink.lock() {
            let _ = file.write_all(&record);
        }
    }
}

/// `line` (with its newline, or without it when cut at [`MAX_LINE`] or the end of the stream)
/// as one record.
fn encode(record: &mut Vec<u8>, at: DateTime<Utc>, stream: &str, line: &[u8]) {
    let (tag, content) = match line.strip_suffix(b"\n") {
        Some(content) => ("F", content),
        None if line.len() >= MAX_LINE => ("P", line),
        None => ("F", line),
    };
    record.extend_from_slice(at.to_rfc3339_opts(SecondsFormat::Nanos, true).as_bytes());
    record.push(b' ');
    record.extend_from_slice(stream.as_bytes());
    record.push(b' ');
    record.extend_from_slice(tag.as_bytes());
    record.push(b' ');
    record.extend_from_slice(content);
    record.push(b'\n');
}

/// How the reader shows records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Render {
    /// Records before this time (milliseconds since the epoch) are left out; 0 keeps all.
    pub since_ms: u64,
    /// Each line starts with the time it was written, as `docker logs --timestamps`.
    pub timestamps: bool,
}

/// One line of the file (without its newline) as output: `None` if it is filtered out.
/// Lines that are not records (a file written before records, by plain `file://` stdio) pass
/// through as they are; they have no time, so `since` leaves them out.
pub fn render(line: &[u8], options: Render, out: &mut Vec<u8>) -> bool {
    let Some(record) = Record::parse(line) else {
        if options.since_ms > 0 {
            return false;
        }
        out.extend_from_slice(line);
        out.push(b'\n');
        return true;
    };
    if options.since_ms > 0 {
        let at_ms = u64::try_from(record.at.timestamp_millis()).unwrap_or(0);
        if at_ms < options.since_ms {
            return false;
        }
    }
    if options.timestamps {
        out.extend_from_slice(record.time);
        out.push(b' ');
    }
    out.extend_from_slice(record.content);
    if !record.partial {
        out.push(b'\n');
    }
    true
}

struct Record<'a> {
    time: &'a [u8],
    at: DateTime<Utc>,
    partial: bool,
    content: &'a [u8],
}

impl<'a> Record<'a> {
    fn parse(line: &'a [u8]) -> Option<Self> {
        let mut fields = line.splitn(4, |b| *b == b' ');
        let time = fields.next()?;
        let stream = fields.next()?;
        let tag = fields.next()?;
        let content = fields.next().unwrap_or_default();
        if !matches!(stream, b"stdout" | b"stderr") || !matches!(tag, b"F" | b"P") {
            return None;
        }
        let at = DateTime::parse_from_rfc3339(std::str::from_utf8(time).ok()?)
            .ok()?
            .with_timezone(&Utc);
        Some(Self {
            time,
            at,
            partial: tag == b"P",
            content,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .expect("a test time")
    }

    fn shown(file: &[u8], options: Render) -> String {
        let mut out = Vec::new();
        for line in file.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            render(line, options, &mut out);
        }
        String::from_utf8(out).expect("text")
    }

    #[test]
    fn records_round_trip_with_and_without_timestamps() {
        let mut file = Vec::new();
        encode(&mut file, at("2026-12-07T10:00:00Z"), "stdout", b"hello\n");
        encode(&mut file, at("2026-12-07T10:00:01.5Z"), "stderr", b"oops\n");
        assert_eq!(
            String::from_utf8_lossy(&file),
            "2026-12-07T10:00:00.000000000Z stdout F hello\n\
             2026-12-07T10:00:01.500000000Z stderr F oops\n"
        );
        assert_eq!(shown(&file, Render::default()), "hello\noops\n");
        let stamped = Render {
            timestamps: true,
            ..Render::default()
        };
        assert_eq!(
            shown(&file, stamped),
            "2026-12-07T10:00:00.000000000Z hello\n2026-12-07T10:00:01.500000000Z oops\n"
        );
    }

    #[test]
    fn since_leaves_out_older_records() {
        let mut file = Vec::new();
        encode(&mut file, at("2026-12-07T10:00:00Z"), "stdout", b"old\n");
        encode(&mut file, at("2026-12-07T10:05:00Z"), "stdout", b"new\n");
        let since_ms =
            u64::try_from(at("2026-12-07T10:01:00Z").timestamp_millis()).expect("after 1970");
        let options = Render {
            since_ms,
            ..Render::default()
        };
        assert_eq!(shown(&file, options), "new\n");
    }

    #[test]
    fn long_lines_are_split_and_joined_again() {
        let long = vec![b'x'; MAX_LINE];
        let mut file = Vec::new();
        encode(&mut file, Utc::now(), "stdout", &long);
        encode(&mut file, Utc::now(), "stdout", b"y\n");
        assert!(String::from_utf8_lossy(&file).contains(" stdout P xxx"));
        let shown = shown(&file, Render::default());
        assert_eq!(shown.len(), MAX_LINE + 2);
        assert!(shown.ends_with("xy\n"));
    }

    #[test]
    fn plain_lines_pass_through_and_a_last_line_without_newline_is_whole() {
        let mut out = Vec::new();
        assert!(render(
            b"written before records",
            Render::default(),
            &mut out
        ));
        assert_eq!(out, b"written before records\n");
        let mut file = Vec::new();
        encode(&mut file, Utc::now(), "stdout", b"no newline at exit");
        assert!(String::from_utf8_lossy(&file).contains(" stdout F no newline at exit\n"));
    }

    #[test]
    fn the_writer_uri_carries_the_path_as_one_argument() {
        let uri = writer_uri(
            Path::new("/usr/local/bin/hivemind"),
            Path::new("/var/lib/hivemind/containers/a b/container.log"),
        );
        assert_eq!(
            uri,
            "binary:///usr/local/bin/hivemind?log-writer=%2Fvar%2Flib%2Fhivemind%2Fcontainers%2Fa+b%2Fcontainer.log"
        );
    }
}
