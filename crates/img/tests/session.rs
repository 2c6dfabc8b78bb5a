//! Multicast sessions end to end: real `img` processes on a LAN of network
//! namespaces (a bridge, one namespace per host) inside a private user+network
//! namespace that each test makes itself; nothing leaves the machine. Loss is
//! injected with nftables at each client.

use std::process::Command;

use imgcast_testlab::{same, Lab};

fn lab() -> Lab {
    Lab::new(env!("CARGO_BIN_EXE_img"))
}

/// A master and `n` clients at `loss` percent; returns the lab after checks.
fn master_and_clients(n: usize, loss: u32, source_flag: &str, prepare: &str) -> Lab {
    let lab = lab();
    lab.sample("disk.raw", 12, 3);
    let script = format!(
        r#"
lab_up {hosts}
{prepare}
for i in $(seq 1 {n}); do
  lab_loss h$i {loss}
  lab_spawn h$i "$DIR/c$i.log" "$IMG" -session e2e -client -disk="$DIR/c$i.raw" >/dev/null
  pids="${{pids:-}} $LAB_LAST_PID"
done
sleep 0.3
lab_exec h0 timeout 120 "$IMG" -session e2e -master -clients={n} -timeout=30s {source_flag} >"$DIR/master.out" 2>"$DIR/master.log"
echo "master exit $?"
lab_wait 30 $pids >/dev/null 2>&1
"#,
        hosts = n + 1,
    );
    let out = lab.run(&script);
    let mut logs = vec!["master.out".to_string(), "master.log".to_string()];
    logs.extend((1..=n).map(|i| format!("c{i}.log")));
    let logs: Vec<&str> = logs.iter().map(String::as_str).collect();
    let text = lab.show(&out, &logs);
    assert!(text.contains("master exit 0"), "{text}");
    for i in 1..=n {
        assert!(
            same(&lab.path("disk.raw"), &lab.path(&format!("c{i}.raw"))),
            "client {i} differs\n{text}"
        );
    }
    let table = lab.log("master.out");
    assert_eq!(table.matches(" done").count(), n, "{text}");
    lab
}

#[test]
fn four_clients_no_loss() {
    master_and_clients(4, 0, "-disk=\"$DIR/disk.raw\"", "");
}

#[test]
fn four_clients_five_percent_loss() {
    master_and_clients(4, 5, "-disk=\"$DIR/disk.raw\"", "");
}

#[test]
fn master_fed_by_an_image_file() {
    master_and_clients(
        2,
        2,
        "-image=\"$DIR/disk.img\"",
        r#""$IMG" make "$DIR/disk.img" -disk="$DIR/disk.raw" -comp=6 2>/dev/null || echo "make failed""#,
    );
}

#[test]
fn late_joiner_is_queued_and_served_by_the_next_run() {
    let lab = lab();
    lab.sample("disk.raw", 24, 5);
    let out = lab.run(
        r#"
lab_up 3
lab_spawn h1 "$DIR/c1.log" "$IMG" -session late -client -disk="$DIR/c1.raw" >/dev/null; c1=$LAB_LAST_PID
sleep 0.3
lab_spawn h0 "$DIR/m1.log" "$IMG" -session late -master -clients=1 -throttle=0.2 -disk="$DIR/disk.raw" >/dev/null; m1=$LAB_LAST_PID
# Join once the first run is under way.
for _ in $(seq 1 100); do grep -q "started" "$DIR/m1.log" 2>/dev/null && break; sleep 0.1; done
lab_spawn h2 "$DIR/c2.log" "$IMG" -session late -client -disk="$DIR/c2.raw" >/dev/null; c2=$LAB_LAST_PID
for _ in $(seq 1 100); do grep -q "queued" "$DIR/c2.log" 2>/dev/null && break; sleep 0.1; done
lab_wait 60 $m1; echo "first run exit $?"
# The next run of the same name serves the queued client.
lab_exec h0 timeout 60 "$IMG" -session late -master -clients=1 -disk="$DIR/disk.raw" >"$DIR/m2.out" 2>"$DIR/m2.log"
echo "second run exit $?"
lab_wait 30 $c1 $c2 >/dev/null
"#,
    );
    let text = lab.show(&out, &["m1.log", "m2.out", "m2.log", "c1.log", "c2.log"]);
    assert!(text.contains("first run exit 0"), "{text}");
    assert!(text.contains("second run exit 0"), "{text}");
    assert!(lab.log("c2.log").contains("queued"), "{text}");
    assert!(lab.log("m1.log").contains("queued"), "{text}");
    assert!(same(&lab.path("disk.raw"), &lab.path("c1.raw")), "{text}");
    assert!(same(&lab.path("disk.raw"), &lab.path("c2.raw")), "{text}");
}

#[test]
fn a_killed_client_is_dropped_and_the_others_finish() {
    let lab = lab();
    lab.sample("disk.raw", 24, 7);
    let out = lab.run(
        r#"
lab_up 4
for i in 1 2 3; do lab_spawn h$i "$DIR/c$i.log" "$IMG" -session kc -client -disk="$DIR/c$i.raw" >/dev/null; done
victim=$LAB_LAST_PID
sleep 0.3
lab_spawn h0 "$DIR/m.log" "$IMG" -session kc -master -clients=3 -throttle=0.1 -disk="$DIR/disk.raw" >/dev/null; m=$LAB_LAST_PID
for _ in $(seq 1 100); do grep -q "started" "$DIR/m.log" 2>/dev/null && break; sleep 0.1; done
sleep 0.5
kill -9 $victim
lab_wait 90 $m; echo "master exit $?"
"#,
    );
    let text = lab.show(&out, &["m.log", "c1.log", "c2.log", "c3.log"]);
    assert!(
        text.contains("master exit 1"),
        "the master must fail when a client dropped\n{text}"
    );
    let m = lab.log("m.log");
    assert!(m.contains("dropped"), "{text}");
    assert!(same(&lab.path("disk.raw"), &lab.path("c1.raw")), "{text}");
    assert!(same(&lab.path("disk.raw"), &lab.path("c2.raw")), "{text}");
}

#[test]
fn a_killed_master_fails_clients_and_leaves_targets_incomplete() {
    let lab = lab();
    lab.sample("disk.raw", 24, 9);
    let out = lab.run(
        r#"
lab_up 3
lab_spawn h1 "$DIR/c1.log" "$IMG" -session km -client -disk="$DIR/c1.raw" >/dev/null; c1=$LAB_LAST_PID
lab_spawn h2 "$DIR/c2.log" "$IMG" -session km -client -disk="$DIR/c2.raw" >/dev/null; c2=$LAB_LAST_PID
sleep 0.3
lab_spawn h0 "$DIR/m.log" "$IMG" -session km -master -clients=2 -throttle=0.3 -disk="$DIR/disk.raw" >/dev/null; m=$LAB_LAST_PID
for _ in $(seq 1 100); do grep -q "started" "$DIR/m.log" 2>/dev/null && break; sleep 0.1; done
sleep 0.5
kill -9 $m
lab_wait 60 $c1 $c2 >/dev/null
for i in 1 2; do "$IMG" info "$DIR/c$i.raw" >"$DIR/info$i.log" 2>&1; echo "info$i exit $?"; done
"#,
    );
    let text = lab.show(
        &out,
        &["m.log", "c1.log", "c2.log", "info1.log", "info2.log"],
    );
    for i in 1..=2 {
        let log = lab.log(&format!("c{i}.log"));
        assert!(log.contains("master fell silent"), "{text}");
        assert!(text.contains(&format!("info{i} exit 1")), "{text}");
        assert!(
            lab.log(&format!("info{i}.log")).contains("UNFINISHED"),
            "{text}"
        );
    }
}

#[test]
fn two_sessions_at_once_do_not_mix() {
    let lab = lab();
    lab.sample("a.raw", 8, 11);
    lab.sample("b.raw", 8, 12);
    let out = lab.run(
        r#"
lab_up 4
lab_spawn h2 "$DIR/ca.log" "$IMG" -session alpha -client -disk="$DIR/ca.raw" >/dev/null; ca=$LAB_LAST_PID
lab_spawn h3 "$DIR/cb.log" "$IMG" -session beta -client -disk="$DIR/cb.raw" >/dev/null; cb=$LAB_LAST_PID
sleep 0.3
lab_spawn h0 "$DIR/ma.log" "$IMG" -session alpha -master -clients=1 -disk="$DIR/a.raw" >/dev/null; ma=$LAB_LAST_PID
lab_spawn h1 "$DIR/mb.log" "$IMG" -session beta -master -clients=1 -disk="$DIR/b.raw" >/dev/null; mb=$LAB_LAST_PID
lab_wait 60 $ma; echo "alpha exit $?"
lab_wait 60 $mb; echo "beta exit $?"
lab_wait 10 $ca $cb >/dev/null
"#,
    );
    let text = lab.show(&out, &["ma.log", "mb.log", "ca.log", "cb.log"]);
    assert!(
        text.contains("alpha exit 0") && text.contains("beta exit 0"),
        "{text}"
    );
    assert!(same(&lab.path("a.raw"), &lab.path("ca.raw")), "{text}");
    assert!(same(&lab.path("b.raw"), &lab.path("cb.raw")), "{text}");
}

#[test]
fn a_wrong_key_never_registers() {
    let lab = lab();
    lab.sample("disk.raw", 4, 13);
    let out = lab.run(
        r#"
lab_up 3
lab_spawn h1 "$DIR/good.log" "$IMG" -session k -client -key=right -disk="$DIR/good.raw" >/dev/null; g=$LAB_LAST_PID
lab_spawn h2 "$DIR/bad.log" "$IMG" -session k -client -key=wrong -disk="$DIR/bad.raw" >/dev/null; b=$LAB_LAST_PID
sleep 0.3
lab_exec h0 timeout 60 "$IMG" -session k -master -clients=1 -timeout=3s -key=right -disk="$DIR/disk.raw" >"$DIR/m.out" 2>"$DIR/m.log"
echo "master exit $?"
lab_wait 10 $g >/dev/null
kill $b 2>/dev/null
"#,
    );
    let text = lab.show(&out, &["m.out", "m.log", "good.log", "bad.log"]);
    assert!(text.contains("master exit 0"), "{text}");
    assert!(same(&lab.path("disk.raw"), &lab.path("good.raw")), "{text}");
    assert!(lab.log("bad.log").contains("wrong -key"), "{text}");
    assert_eq!(lab.log("m.out").matches(" done").count(), 1, "{text}");
}

#[test]
fn garbage_datagrams_are_ignored() {
    let lab = lab();
    lab.sample("disk.raw", 8, 17);
    let out = lab.run(
        r#"
lab_up 3
lab_spawn h1 "$DIR/c.log" "$IMG" -session junk -client -disk="$DIR/c.raw" >/dev/null; c=$LAB_LAST_PID
lab_spawn h0 "$DIR/m.log" "$IMG" -session junk -master -clients=1 -disk="$DIR/disk.raw" >/dev/null; m=$LAB_LAST_PID
for _ in $(seq 1 50); do grep -q "group 231" "$DIR/m.log" 2>/dev/null && break; sleep 0.1; done
group=$(grep -o "group 231[.0-9]*" "$DIR/m.log" | head -n1 | cut -d' ' -f2)
master_ip=$(lab_ip h0)
# h2 sprays junk at the group and at the master's port range while the session runs.
lab_exec h2 python3 - "$group" "$master_ip" <<'PY'
import os, socket, sys, time
g, m = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
end = time.time() + 3
n = 0
while time.time() < end and n < 20000:
    payload = os.urandom(n % 1500 + 1)
    if n % 3 == 0:
        payload = b"IMGC" + payload  # our magic, then junk
    s.sendto(payload, (g, 8471))
    n += 1
print("sent", n)
PY
lab_wait 90 $m; echo "master exit $?"
lab_wait 10 $c >/dev/null
"#,
    );
    let text = lab.show(&out, &["m.log", "c.log"]);
    assert!(text.contains("sent "), "{text}");
    assert!(text.contains("master exit 0"), "{text}");
    assert!(same(&lab.path("disk.raw"), &lab.path("c.raw")), "{text}");
}

#[test]
fn no_role_devices_pick_a_master_with_m_and_start_with_s() {
    let lab = lab();
    lab.sample("disk.raw", 6, 19);
    // Without a terminal, SIGUSR2 is the `m` key and SIGUSR1 the `s` key.
    let out = lab.run(
        r#"
lab_up 3
lab_spawn h1 "$DIR/a.log" "$IMG" -session norole -disk="$DIR/disk.raw" >/dev/null; a=$LAB_LAST_PID
lab_spawn h2 "$DIR/b.log" "$IMG" -session norole -disk="$DIR/b.raw" >/dev/null; b=$LAB_LAST_PID
for _ in $(seq 1 50); do grep -q "press m" "$DIR/a.log" "$DIR/b.log" 2>/dev/null && break; sleep 0.1; done
kill -USR2 $a
for _ in $(seq 1 100); do grep -q "registered (1 so far" "$DIR/a.log" 2>/dev/null && break; sleep 0.1; done
kill -USR1 $a
lab_wait 60 $a; echo "master exit $?"
lab_wait 20 $b; echo "client exit $?"
"#,
    );
    let text = lab.show(&out, &["a.log", "b.log"]);
    assert!(text.contains("master exit 0"), "{text}");
    assert!(text.contains("client exit 0"), "{text}");
    assert!(
        lab.log("a.log").contains("this device is the master"),
        "{text}"
    );
    assert!(same(&lab.path("disk.raw"), &lab.path("b.raw")), "{text}");
}

#[test]
fn the_demo_runs() {
    // The demo builds a lab of its own.
    let _one = imgcast_testlab::one_at_a_time();
    let out = Command::new(env!("CARGO_BIN_EXE_img"))
        .args(["demo", "--clients", "2", "--size-mib", "8", "--loss", "3"])
        .output()
        .expect("run img demo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("  identical").count(), 2, "{text}");
}
