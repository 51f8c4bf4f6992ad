//! Shell integration, as an operator installs it: the bash completion script, loaded by a real
//! bash, completes subcommands; the other shells' scripts name the commands; the man pages are
//! written for every command and render with groff's man macros.

use std::process::Command;

use hivemind_tests::util::{hivemind_bin, stderr, stdout};

/// What bash completes for `words` (the cursor at the end of the last one).
fn bash_complete(words: &[&str]) -> Vec<String> {
    let script = format!(
        "source <({bin} completion bash)\n\
         COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE=\"{line}\"; COMP_POINT=${{#COMP_LINE}}\n\
         _hivemind hivemind \"{cur}\" \"{prev}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        bin = hivemind_bin().display(),
        words = words.join(" "),
        cword = words.len() - 1,
        line = words.join(" "),
        cur = words[words.len() - 1],
        prev = words[words.len() - 2],
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("run bash");
    assert!(out.status.success(), "bash: {}", stderr(&out));
    stdout(&out).lines().map(str::to_owned).collect()
}

#[test]
fn bash_completes_commands_and_man_pages_are_written() {
    assert_eq!(bash_complete(&["hivemind", "app", "de"]), ["deploy"]);
    let top = bash_complete(&["hivemind", "reg"]);
    assert_eq!(top, ["registry"], "{top:?}");
    let flags = bash_complete(&["hivemind", "app", "deploy", "--sec"]);
    assert!(flags.contains(&"--secret".to_owned()), "{flags:?}");

    for shell in ["zsh", "fish"] {
        let out = Command::new(hivemind_bin())
            .args(["completion", shell])
            .output()
            .expect("completion");
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        assert!(stdout(&out).contains("deploy"), "{shell}");
    }
    let bad = Command::new(hivemind_bin())
        .args(["completion", "tcsh"])
        .output()
        .expect("completion");
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("tcsh"), "{}", stderr(&bad));

    let dir = tempfile::tempdir().expect("man dir");
    let out = Command::new(hivemind_bin())
        .arg("man")
        .arg(dir.path())
        .output()
        .expect("man");
    assert!(out.status.success(), "{}", stderr(&out));
    for page in [
        "hivemind.1",
        "hivemind-app-deploy.1",
        "hivemind-secret-create.1",
    ] {
        let path = dir.path().join(page);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page} is not a man page");
    }
    // groff renders it (as `man` would).
    let rendered = Command::new("groff")
        .args(["-man", "-Tascii", "-P-cbou"])
        .arg(dir.path().join("hivemind-app-deploy.1"))
        .output()
        .expect("groff");
    assert!(rendered.status.success(), "{}", stderr(&rendered));
    assert!(
        stdout(&rendered).contains("--secret"),
        "{}",
        stdout(&rendered)
    );
}
