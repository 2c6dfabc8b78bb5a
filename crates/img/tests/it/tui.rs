//! The interactive terminal end to end: the real `img` binary in tmux panes
//! (pseudo-terminals), on a LAN of network namespaces inside a private
//! user+network namespace the test makes itself. Keys go in with `tmux
//! send-keys`, the screen comes back with `capture-pane`. The tmux server has
//! its own socket in the test's directory and is killed by the test.

use std::process::{Command, Output};
use std::time::Duration;

use imgcast_testlab::{Lab, LAB_SH};

/// Shell helpers for the scripts: `T` is tmux on our own socket; `pane NAME
/// HOST CMD` runs CMD in HOST on a new 110x32 terminal and keeps the pane
/// open after it exits (printing `EXIT=status`); `wait_for NAME TEXT SECS`
/// waits until TEXT is on that screen, or prints the screen and fails.
const HELPERS: &str = r#"
T() { tmux -S "$DIR/tmux.sock" -f /dev/null "$@"; }
trap 'T kill-server 2>/dev/null' EXIT
cp "$DIR/lab.sh.in" "$DIR/lab.sh"
cat >"$DIR/in.sh" <<'EOF'
#!/bin/bash
. "$DIR/lab.sh"
h=$1; shift
lab_exec "$h" env TERM=xterm-256color "$@"
echo "EXIT=$?"
sleep 600
EOF
chmod +x "$DIR/in.sh"
pane() {
    local name=$1 host=$2; shift 2
    T new-session -d -s "$name" -x 110 -y 32 "$DIR/in.sh" "$host" "$@"
}
keys() { local t=$1; shift; T send-keys -t "$t" "$@"; sleep 0.15; }
text() { local t=$1; shift; T send-keys -t "$t" -l "$@"; sleep 0.15; }
wait_for() {
    local t=$1 want=$2 secs=$3 i
    for ((i = 0; i < secs * 10; i++)); do
        if T capture-pane -p -t "$t" | grep -qF -- "$want"; then
            echo "saw [$want] on $t"
            return 0
        fi
        sleep 0.1
    done
    echo "TIMEOUT: no [$want] on $t after ${secs}s; the screen:"
    T capture-pane -p -t "$t"
    exit 1
}
"#;

/// Runs `script` after [`HELPERS`] in a lab holding `disk.raw` (a 3 MiB
/// sample) and lab.sh as `lab.sh.in`, for the panes to load.
fn run(script: &str) -> (Output, Lab) {
    let lab = Lab::new(env!("CARGO_BIN_EXE_img")).time_limit(Duration::from_secs(240));
    std::fs::write(lab.path("lab.sh.in"), LAB_SH).expect("write lab.sh");
    lab.sample("disk.raw", 3, 1);
    let out = lab.run(&format!("{HELPERS}\n{script}"));
    (out, lab)
}

fn have_tmux() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Menu → master and menu → client, the client shows up on the master's
/// screen, `s` starts, both finish and the disk arrives intact. Wrong values
/// in the form are named on the way.
#[test]
fn menu_master_and_client_finish_a_session() {
    assert!(
        have_tmux(),
        "tmux is needed: bash scripts/setup.sh installs it"
    );
    let (out, lab) = run(r#"
lab_up 2
pane m h0 "$IMG"
wait_for m "Multicast Session" 10
keys m Enter
wait_for m "Master: send this device's disk" 5
keys m Enter
wait_for m "Session Name" 5
# Wrong values first: a blank in the name, no disk, a bad compression.
text m "tui lab"
keys m Down Down Down Down BSpace
text m 12
keys m Down Down Enter
wait_for m "non-printable or blank" 5
wait_for m "is not a compression level" 5
wait_for m "choose a disk" 5
# Focus went back to the name: fix everything.
keys m BSpace BSpace BSpace BSpace BSpace BSpace BSpace
text m tuilab
keys m Down Down Down Down BSpace BSpace
text m 1
keys m Down
text m "$DIR/disk.raw"
keys m Down Enter
wait_for m "Press Enter to enable the session" 5
wait_for m "img -session tuilab -master -timeout=5 -comp=1" 5
keys m Enter
wait_for m "Gathering clients: 0 registered" 10

pane c h1 "$IMG"
wait_for c "Multicast Session" 10
keys c Enter Down Enter
wait_for c "Multicast Session · Client" 5
text c tuilab
keys c Down
text c "$DIR/c1.raw"
keys c Down Enter
wait_for c "Press Enter to enable the session" 5
keys c Enter
wait_for c "Registered: waiting for the master to start" 20
wait_for m "10.77.0.11" 10
wait_for m "Gathering clients: 1 registered" 5
keys m s
wait_for c "Done: 3.0 MiB written and verified" 60
wait_for m "Finished: 1 of 1 clients done" 30
wait_for m "done, verified" 5
keys c Enter
keys m Enter
wait_for c "EXIT=0" 10
wait_for m "EXIT=0" 10
cmp "$DIR/disk.raw" "$DIR/c1.raw" && echo "IDENTICAL"
"#);
    let text = lab.show(&out, &[]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("IDENTICAL"), "{text}");
    drop(lab);
}

/// `img -session ... -master` on a terminal draws the live screen; `q` asks,
/// `y` aborts. A client asked to overwrite a non-empty file wants `yes`.
#[test]
fn q_asks_and_aborts_and_overwriting_needs_a_yes() {
    assert!(
        have_tmux(),
        "tmux is needed: bash scripts/setup.sh installs it"
    );
    let (out, lab) = run(r#"
lab_up 2
pane m h0 "$IMG" -session abortme -master -disk="$DIR/disk.raw"
wait_for m "Gathering clients: 0 registered" 10
wait_for m "Only s starts the session" 5
keys m q
wait_for m "Abort the session?" 5
keys m n
sleep 0.5
T capture-pane -p -t m | grep -q "Abort the session?" && { echo "the question stayed"; exit 1; }
keys m q
wait_for m "Abort the session?" 5
keys m y
wait_for m "EXIT=1" 15
wait_for m "aborted" 5

cp "$DIR/disk.raw" "$DIR/full.raw"
pane c h1 "$IMG" -session abortme -client -disk="$DIR/full.raw"
wait_for c "Type yes (or full.raw) to overwrite it" 10
wait_for c "file, 3.0 MiB" 5
text c no
keys c Enter
wait_for c "not confirmed" 5
wait_for c "EXIT=1" 5
cmp "$DIR/disk.raw" "$DIR/full.raw" && echo "UNTOUCHED"

# img restore asks the same way; "no" keeps the file, "yes" restores it.
"$IMG" make "$DIR/other.img" -disk="$DIR/lab.sh" 2>/dev/null
pane r1 h1 "$IMG" restore "$DIR/other.img" -disk="$DIR/full.raw"
wait_for r1 "the restore will overwrite" 10
wait_for r1 "Type yes (or full.raw) to overwrite it" 5
text r1 no
keys r1 Enter
wait_for r1 "EXIT=1" 5
cmp "$DIR/disk.raw" "$DIR/full.raw" && echo "RESTORE UNTOUCHED"
pane r2 h1 "$IMG" restore "$DIR/other.img" -disk="$DIR/full.raw"
wait_for r2 "Type yes (or full.raw) to overwrite it" 10
text r2 yes
keys r2 Enter
wait_for r2 "EXIT=0" 10
cmp "$DIR/lab.sh" "$DIR/full.raw" && echo "RESTORED AFTER YES"
"#);
    let text = lab.show(&out, &[]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("UNTOUCHED"), "{text}");
    assert!(text.contains("RESTORE UNTOUCHED"), "{text}");
    assert!(text.contains("RESTORED AFTER YES"), "{text}");
    drop(lab);
}

/// Completions and the man page come from the clap definitions: they know the
/// subcommands and options `--help` knows.
#[test]
fn completions_and_man_page_are_generated() {
    let img = env!("CARGO_BIN_EXE_img");
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = Command::new(img)
            .args(["completions", shell])
            .output()
            .expect("run img completions");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}: {out:?}");
        assert!(
            text.contains("session") && text.contains("clients"),
            "{shell}: {text}"
        );
    }
    let out = Command::new(img).arg("man").output().expect("run img man");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.starts_with(".ie") || text.contains(".TH img"),
        "{text}"
    );
    assert!(
        text.contains("completions") && text.contains("restore"),
        "{text}"
    );
    // Every subcommand has its page, with every option (regression, issue 13:
    // the one page knew none of the session's options).
    let page = |sub: &str| {
        let out = Command::new(img)
            .args(["man", sub])
            .output()
            .expect("run img man SUB");
        assert!(out.status.success(), "{sub}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let session = page("session");
    for opt in [
        "clients",
        "timeout",
        "throttle",
        "comp",
        "key",
        "wait",
        "interface",
        "port",
    ] {
        assert!(
            session.contains(&format!("\\-\\-{opt}")),
            "--{opt} missing:\n{session}"
        );
    }
    assert!(session.contains(".TH img-session 1"), "{session}");
    assert!(page("make").contains("\\-\\-comp"));
    let server = page("server");
    for opt in ["listen", "token\\-file", "images", "state"] {
        assert!(
            server.contains(&format!("\\-\\-{opt}")),
            "--{opt} missing:\n{server}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(img)
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run img man --dir");
    assert!(out.status.success(), "{out:?}");
    for f in [
        "img.1",
        "img-session.1",
        "img-make.1",
        "img-server.1",
        "img-demo.1",
    ] {
        assert!(dir.path().join(f).exists(), "{f} not written");
    }
    let unknown = Command::new(img)
        .args(["man", "nope"])
        .output()
        .expect("run img man nope");
    assert_eq!(unknown.status.code(), Some(2));
    let bad = Command::new(img)
        .args(["completions", "tcsh"])
        .output()
        .expect("run img completions tcsh");
    assert_eq!(bad.status.code(), Some(2));
}
