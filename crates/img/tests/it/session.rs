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
/// `prepare` runs in the lab before the clients start, `after` once all ended
/// (its output lands in `after.out`).
fn master_and_clients(n: usize, loss: u32, source_flag: &str, prepare: &str, after: &str) -> Lab {
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
{{ {after}
}} >"$DIR/after.out" 2>&1
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
    master_and_clients(4, 0, "-disk=\"$DIR/disk.raw\"", "", "");
}

#[test]
fn four_clients_five_percent_loss() {
    master_and_clients(4, 5, "-disk=\"$DIR/disk.raw\"", "", "");
}

/// Clients whose NICs join what they receive (GRO): each client's socket then
/// reads runs of datagrams as one buffer and must cut them apart exactly. The
/// loss is drawn per wire datagram before the join (on the bridge port), so
/// aggregates arrive with holes in the run, as on a real lossy LAN.
#[test]
fn clients_behind_nics_that_join_datagrams_under_loss() {
    let prepare = r#"lab_segment h0 || exit 1
for i in 1 2 3; do lab_gro h$i && lab_loss_port h$i 5 512 || exit 1; done"#;
    // What each port's loss rule dropped: `... counter packets N bytes M drop`.
    let after = "for i in 1 2 3; do nft list table bridge lab_loss_h$i; done";
    let lab = master_and_clients(3, 0, "-disk=\"$DIR/disk.raw\"", prepare, after);
    let rules = lab.log("after.out");
    let drops: Vec<u64> = rules
        .lines()
        .filter(|l| l.contains("drop"))
        .filter_map(|l| {
            l.split("counter packets ")
                .nth(2)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(drops.len() == 3 && drops.iter().all(|&d| d > 0), "{rules}");
    // Cut wrongly, every aggregate would be lost whole (over 100% repair);
    // cut right, repair covers the 5% lost and a margin.
    let text = format!("{}{}", lab.log("master.out"), lab.log("master.log"));
    let repair: f64 = text
        .lines()
        .find(|l| l.contains(" sent, repair "))
        .and_then(|l| {
            l.rsplit("repair ")
                .next()?
                .trim_end_matches('%')
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no repair figure\n{text}"));
    assert!(repair < 30.0, "repair {repair}%\n{text}");
}

#[test]
fn master_fed_by_an_image_file() {
    master_and_clients(
        2,
        2,
        "-image=\"$DIR/disk.img\"",
        r#""$IMG" make "$DIR/disk.img" -disk="$DIR/disk.raw" -comp=6 2>/dev/null || echo "make failed""#,
        "",
    );
}

#[test]
fn late_joiner_is_queued_and_served_by_the_follow_up_run() {
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
# The master serves the queued client in a follow-up run of the same name, by itself.
lab_wait 90 $m1; echo "master exit $?"
lab_wait 30 $c1 $c2 >/dev/null
"#,
    );
    let text = lab.show(&out, &["m1.log", "c1.log", "c2.log"]);
    assert!(text.contains("master exit 0"), "{text}");
    assert!(lab.log("c2.log").contains("queued"), "{text}");
    let m = lab.log("m1.log");
    assert!(m.contains("queued"), "{text}");
    assert!(m.contains("follow-up run 2 for 1 client"), "{text}");
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
# Both must be listening (their signal handlers in place) before a signal reaches them.
for _ in $(seq 1 100); do grep -q "press m" "$DIR/a.log" 2>/dev/null && grep -q "press m" "$DIR/b.log" 2>/dev/null && break; sleep 0.1; done
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

/// The script prefix that lets a lab host run [`hostile_peer`]: `hostile HOST LOG ARGS...` starts
/// this very test binary there as the hostile host, in the background (its pid in `$LAB_LAST_PID`).
fn hostile_prelude() -> String {
    let me = std::env::current_exe().expect("test binary path");
    format!(
        r#"
SELF="{}"
hostile() {{ local h=$1 log=$2; shift 2
  lab_spawn "$h" "$log" env IMGCAST_HOSTILE="$*" "$SELF" --exact session::hostile_peer --ignored --nocapture >/dev/null; }}
"#,
        me.display()
    )
}

/// A file of other data that a client must leave alone until its session starts.
fn precious(lab: &Lab, name: &str, mib: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..mib << 20).map(|i| (i % 251) as u8 ^ 0x5A).collect();
    std::fs::write(lab.path(name), &data).expect("write the precious target");
    data
}

/// Hostile traffic from a third host during a transfer: captured packets of the session replayed
/// as they are, with bytes flipped, cut short and padded, and random garbage, to the group and to
/// the master. The worst it may do is cost bandwidth.
fn hostile_traffic_during_a_transfer(key: &str) {
    let lab = lab();
    lab.sample("disk.raw", 24, 21);
    let script = format!(
        r#"{prelude}
lab_up 4
for i in 1 2; do
  lab_spawn h$i "$DIR/c$i.log" "$IMG" -session hostile -client {key} -disk="$DIR/c$i.raw" >/dev/null
  pids="${{pids:-}} $LAB_LAST_PID"
done
hostile h3 "$DIR/spray.log" spray hostile 8471 6 20000
sleep 0.5
lab_exec h0 timeout 120 "$IMG" -session hostile -master -clients=2 -throttle=0.15 {key} -disk="$DIR/disk.raw" >"$DIR/m.out" 2>"$DIR/m.log"
echo "master exit $?"
lab_wait 30 $pids >/dev/null 2>&1
lab_wait 10 $LAB_LAST_PID >/dev/null 2>&1
"#,
        prelude = hostile_prelude()
    );
    let out = lab.run(&script);
    let text = lab.show(&out, &["m.out", "m.log", "c1.log", "c2.log", "spray.log"]);
    assert!(text.contains("master exit 0"), "{text}");
    for i in 1..=2 {
        assert!(
            same(&lab.path("disk.raw"), &lab.path(&format!("c{i}.raw"))),
            "client {i} differs\n{text}"
        );
    }
    let spray = lab.log("spray.log");
    let sent: u64 = spray
        .lines()
        .find_map(|l| l.strip_prefix("sent "))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        sent >= 2000,
        "the hostile host sent only {sent} datagrams\n{text}"
    );
    assert!(spray.contains("captured"), "{text}");
}

#[test]
fn hostile_traffic_during_a_transfer_costs_only_bandwidth() {
    hostile_traffic_during_a_transfer("");
}

#[test]
fn hostile_traffic_during_a_keyed_transfer_costs_only_bandwidth() {
    hostile_traffic_during_a_transfer("-key=lab-secret");
}

#[test]
fn forged_announces_leave_a_waiting_client_untouched() {
    let lab = lab();
    lab.sample("small.raw", 4, 22);
    // The target lives on a 16 MiB filesystem: no disk larger than that fits there.
    let script = format!(
        r#"{prelude}
lab_up 3
mkdir -p "$DIR/small" && mount -t tmpfs -o size=16m lab-small "$DIR/small"
head -c 8388608 /dev/zero | tr '\0' '\132' >"$DIR/small/target.raw"
cp "$DIR/small/target.raw" "$DIR/before.raw"
lab_spawn h1 "$DIR/c.log" "$IMG" -session forged -client -disk="$DIR/small/target.raw" >/dev/null; c=$LAB_LAST_PID
sleep 0.3
for kind in wrong-id huge larger broken; do
  lab_exec h2 env IMGCAST_HOSTILE="announce forged 8471 $kind 67108864" "$SELF" --exact session::hostile_peer --ignored --nocapture >>"$DIR/forger.log" 2>&1
  # The client gives the wrong id's run up only after its register patience (5 s): let it
  # listen again before the next forgery (at most 10 s).
  if [ "$kind" = wrong-id ]; then
    for i in $(seq 100); do grep -q "did not answer the registration" "$DIR/c.log" && break; sleep 0.1; done
  fi
done
sleep 4
cmp -s "$DIR/small/target.raw" "$DIR/before.raw" && echo "target untouched"
# A real master of the name then serves the client, which kept waiting.
lab_exec h0 timeout 60 "$IMG" -session forged -master -clients=1 -disk="$DIR/small.raw" >"$DIR/m.out" 2>"$DIR/m.log"
echo "master exit $?"
lab_wait 20 $c; echo "client exit $?"
cmp -s "$DIR/small/target.raw" "$DIR/small.raw" && echo "client identical"
"#,
        prelude = hostile_prelude()
    );
    let out = lab.run(&script);
    let text = lab.show(&out, &["c.log", "forger.log", "m.out", "m.log"]);
    assert!(text.contains("target untouched"), "{text}");
    let c = lab.log("c.log");
    assert!(
        c.contains("did not answer the registration"),
        "wrong id: {text}"
    );
    assert!(c.contains("more than a session carries"), "huge: {text}");
    assert!(c.contains("the image needs 67108864"), "larger: {text}");
    assert!(
        c.contains("cut short or padded") || c.contains("impossible"),
        "broken: {text}"
    );
    assert!(text.contains("master exit 0"), "{text}");
    assert!(text.contains("client exit 0"), "{text}");
    assert!(text.contains("client identical"), "{text}");
}

#[test]
fn a_forged_end_during_a_transfer_is_not_obeyed() {
    let lab = lab();
    lab.sample("disk.raw", 16, 23);
    let script = format!(
        r#"{prelude}
lab_up 4
for i in 1 2; do
  lab_spawn h$i "$DIR/c$i.log" "$IMG" -session ends -client -disk="$DIR/c$i.raw" >/dev/null
  pids="${{pids:-}} $LAB_LAST_PID"
done
hostile h3 "$DIR/forger.log" forge-end ends 8471 4
forger=$LAB_LAST_PID
sleep 0.5
lab_exec h0 timeout 120 "$IMG" -session ends -master -clients=2 -throttle=0.4 -disk="$DIR/disk.raw" >"$DIR/m.out" 2>"$DIR/m.log"
echo "master exit $?"
lab_wait 30 $pids >/dev/null 2>&1
lab_wait 10 $forger >/dev/null 2>&1
"#,
        prelude = hostile_prelude()
    );
    let out = lab.run(&script);
    let text = lab.show(&out, &["m.out", "m.log", "c1.log", "c2.log", "forger.log"]);
    assert!(text.contains("master exit 0"), "{text}");
    for i in 1..=2 {
        assert!(
            same(&lab.path("disk.raw"), &lab.path(&format!("c{i}.raw"))),
            "client {i} differs\n{text}"
        );
    }
    let forged: u64 = lab
        .log("forger.log")
        .lines()
        .find_map(|l| l.strip_prefix("forged "))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(forged >= 10, "{text}");
    for i in 1..=2 {
        assert!(
            lab.log(&format!("c{i}.log"))
                .contains("disagree about the root hash"),
            "the forged End reached client {i} and was not obeyed\n{text}"
        );
    }
}

/// Another imgcast release on the group (its packets carry another protocol version) cannot join:
/// a client alone with it, and then a master alone with it, each say so once instead of only
/// waiting, and the client's target is left alone.
#[test]
fn another_release_on_the_group_is_named_by_master_and_client() {
    let lab = lab();
    lab.sample("disk.raw", 4, 25);
    let before = precious(&lab, "c.raw", 6);
    let old = imgcast_proto::wire::VERSION - 1;
    let script = format!(
        r#"{prelude}
lab_up 3
hostile h2 "$DIR/old.log" old-release vers 8471 8
old=$LAB_LAST_PID
# Until it sends (a loaded host starts the helper slowly), at most 20 s.
for _ in $(seq 100); do grep -q sending "$DIR/old.log" 2>/dev/null && break; sleep 0.2; done
lab_exec h1 timeout 3 "$IMG" -session vers -client -disk="$DIR/c.raw" -yes >"$DIR/c.out" 2>"$DIR/c.log"
echo "client exit $?"
lab_exec h0 timeout 3 "$IMG" -session vers -master -clients=1 -disk="$DIR/disk.raw" >"$DIR/m.out" 2>"$DIR/m.log"
echo "master exit $?"
lab_wait 20 $old >/dev/null 2>&1
"#,
        prelude = hostile_prelude()
    );
    let out = lab.run(&script);
    let text = lab.show(&out, &["c.log", "m.out", "m.log", "old.log"]);
    assert!(text.contains("client exit 124"), "{text}");
    assert!(text.contains("master exit 124"), "{text}");
    let note = format!(
        "sends imgcast protocol version {old}, this img speaks version {}",
        old + 1
    );
    for log in ["m.log", "c.log"] {
        assert_eq!(
            lab.log(log).matches(&note).count(),
            1,
            "{log} names the other release once\n{text}"
        );
    }
    assert_eq!(
        std::fs::read(lab.path("c.raw")).expect("target"),
        before,
        "no session started: the target is untouched"
    );
}

#[test]
fn a_replayed_announce_of_an_earlier_keyed_run_registers_nobody() {
    let lab = lab();
    lab.sample("disk.raw", 4, 24);
    precious(&lab, "late.raw", 6);
    let before = std::fs::read(lab.path("late.raw")).expect("target");
    let script = format!(
        r#"{prelude}
lab_up 4
# The earlier run, recorded by h3.
hostile h3 "$DIR/capture.log" capture replay 8471 "$DIR/announce.bin"
cap=$LAB_LAST_PID
lab_spawn h1 "$DIR/c1.log" "$IMG" -session replay -client -key=k3y -disk="$DIR/c1.raw" >/dev/null; c1=$LAB_LAST_PID
sleep 0.3
lab_exec h0 timeout 60 "$IMG" -session replay -master -clients=1 -key=k3y -disk="$DIR/disk.raw" >"$DIR/m1.out" 2>"$DIR/m1.log"
echo "first run exit $?"
lab_wait 10 $c1 $cap >/dev/null
# Later: a client waits, and h3 replays the recorded Announce.
lab_spawn h2 "$DIR/late.log" "$IMG" -session replay -client -key=k3y -disk="$DIR/late.raw" >/dev/null; late=$LAB_LAST_PID
lab_exec h3 env IMGCAST_HOSTILE="replay replay 8471 $DIR/announce.bin 8" "$SELF" --exact session::hostile_peer --ignored --nocapture >"$DIR/replay.log" 2>&1
cmp -s "$DIR/late.raw" "$DIR/late.before" && echo "target untouched"
# A real master of the name then serves the waiting client.
lab_exec h0 timeout 60 "$IMG" -session replay -master -clients=1 -key=k3y -disk="$DIR/disk.raw" >"$DIR/m2.out" 2>"$DIR/m2.log"
echo "second run exit $?"
lab_wait 20 $late; echo "late exit $?"
"#,
        prelude = hostile_prelude()
    );
    std::fs::write(lab.path("late.before"), &before).expect("copy");
    let out = lab.run(&script);
    let text = lab.show(
        &out,
        &[
            "m1.log",
            "c1.log",
            "capture.log",
            "replay.log",
            "late.log",
            "m2.log",
        ],
    );
    assert!(text.contains("first run exit 0"), "{text}");
    assert!(
        lab.log("capture.log").contains("captured announce"),
        "{text}"
    );
    assert!(lab.log("replay.log").contains("replayed"), "{text}");
    assert!(text.contains("target untouched"), "{text}");
    let late = lab.log("late.log");
    let replays_end = late.find("registered").unwrap_or(late.len());
    assert!(
        late[..replays_end].contains("did not answer the registration"),
        "the replayed announce was followed, then given up: {text}"
    );
    assert!(
        text.contains("second run exit 0") && text.contains("late exit 0"),
        "{text}"
    );
    assert!(same(&lab.path("disk.raw"), &lab.path("late.raw")), "{text}");
}

#[test]
fn a_client_whose_master_dies_before_the_start_waits_untouched_for_the_next() {
    let lab = lab();
    lab.sample("disk.raw", 4, 25);
    let before = precious(&lab, "c.raw", 6);
    std::fs::write(lab.path("c.before"), &before).expect("copy");
    let out = lab.run(
        r#"
lab_up 3
lab_spawn h1 "$DIR/c.log" "$IMG" -session reboot -client -disk="$DIR/c.raw" >/dev/null; c=$LAB_LAST_PID
lab_spawn h2 "$DIR/w.log" "$IMG" -session reboot -client -wait=3s -disk="$DIR/w.raw" >/dev/null; w=$LAB_LAST_PID
sleep 0.3
lab_wait 8 $w; echo "waiter exit $?"
# A master that waits for two clients, killed once the first registered.
lab_spawn h0 "$DIR/m1.log" "$IMG" -session reboot -master -clients=2 -disk="$DIR/disk.raw" >/dev/null; m1=$LAB_LAST_PID
for _ in $(seq 1 100); do grep -q "registered" "$DIR/c.log" 2>/dev/null && break; sleep 0.1; done
kill -9 $m1
# A minute later, a new master of the same name.
sleep 60
cmp -s "$DIR/c.raw" "$DIR/c.before" && echo "target untouched after a minute"
lab_exec h0 timeout 60 "$IMG" -session reboot -master -clients=1 -disk="$DIR/disk.raw" >"$DIR/m2.out" 2>"$DIR/m2.log"
echo "second master exit $?"
lab_wait 20 $c; echo "client exit $?"
"#,
    );
    let text = lab.show(&out, &["m1.log", "c.log", "w.log", "m2.out", "m2.log"]);
    let c = lab.log("c.log");
    assert!(c.contains("registered"), "{text}");
    assert!(c.contains("fell silent before the start"), "{text}");
    assert!(text.contains("target untouched after a minute"), "{text}");
    assert!(text.contains("second master exit 0"), "{text}");
    assert!(text.contains("client exit 0"), "{text}");
    assert!(same(&lab.path("disk.raw"), &lab.path("c.raw")), "{text}");
    // -wait bounds the wait for scripts; the target is not even created.
    assert!(text.contains("waiter exit 1"), "{text}");
    assert!(
        lab.log("w.log")
            .contains("no session reboot started within 3 s"),
        "{text}"
    );
    assert!(!lab.path("w.raw").exists(), "{text}");
}

/// The hostile host of the tests above, run on a lab host by re-executing this test binary with
/// its arguments in `IMGCAST_HOSTILE` (see [`hostile_prelude`]). Not a test by itself.
#[test]
#[ignore = "a helper that lab scripts run on a hostile host"]
fn hostile_peer() {
    let Ok(args) = std::env::var("IMGCAST_HOSTILE") else {
        return;
    };
    let args: Vec<&str> = args.split_whitespace().collect();
    if let Err(e) = hostile::main(&args) {
        panic!("hostile peer {args:?}: {e}");
    }
}

/// What a hostile or careless host on the LAN can do with the protocol's own code: capture the
/// group, replay and mutate what it saw, forge packets under the keyless check key.
mod hostile {
    use std::io;
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
    use std::time::{Duration, Instant};

    use imgcast_engine::SessionInfo;
    use imgcast_image::{Geometry, Level};
    use imgcast_proto::wire::{self, Announce, Body, Header, Packet, Phase, MASTER};
    use imgcast_proto::{PacketKey, SessionName};

    type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

    /// A socket on the group of session `name`, receiving its traffic, able to send to it.
    fn group_socket(name: &str, port: u16) -> Result<(UdpSocket, SocketAddr)> {
        let name = SessionName::new(name)?;
        let group = name.group_addr();
        let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
        s.join_multicast_v4(&group, &Ipv4Addr::UNSPECIFIED)?;
        s.set_multicast_ttl_v4(1)?;
        s.set_multicast_loop_v4(false)?;
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok((s, SocketAddr::V4(SocketAddrV4::new(group, port))))
    }

    fn recv(s: &UdpSocket, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        match s.recv_from(buf) {
            Ok(r) => Some(r),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(_) => None,
        }
    }

    /// xorshift: repeatable mutations.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    pub(super) fn main(args: &[&str]) -> Result<()> {
        match args {
            ["spray", name, port, secs, max] => {
                spray(name, port.parse()?, secs.parse()?, max.parse()?)
            }
            ["announce", name, port, kind, size] => {
                announce(name, port.parse()?, kind, size.parse()?)
            }
            ["forge-end", name, port, secs] => forge_end(name, port.parse()?, secs.parse()?),
            ["old-release", name, port, secs] => old_release(name, port.parse()?, secs.parse()?),
            ["capture", name, port, file] => capture(name, port.parse()?, file),
            ["replay", name, port, file, secs] => replay(name, port.parse()?, file, secs.parse()?),
            _ => Err(format!("unknown hostile command {args:?}").into()),
        }
    }

    /// Captures the group for `secs` seconds and sends, for what it captured, copies as they are,
    /// with bytes flipped, cut short and padded, plus random garbage — to the group and to the
    /// master's unicast address — at most `max` datagrams.
    fn spray(name: &str, port: u16, secs: f64, max: u64) -> Result<()> {
        let (s, group) = group_socket(name, port)?;
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut captured: Vec<Vec<u8>> = Vec::new();
        let mut master: Option<SocketAddr> = None;
        let (mut seen, mut sent) = (0u64, 0u64);
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut buf = vec![0u8; 65536];
        s.set_read_timeout(Some(Duration::from_millis(2)))?;
        while Instant::now() < end && sent < max {
            if let Some((n, from)) = recv(&s, &mut buf) {
                seen += 1;
                master = Some(from);
                if captured.len() < 512 {
                    captured.push(buf[..n].to_vec());
                } else {
                    let i = rng.below(captured.len());
                    captured[i] = buf[..n].to_vec();
                }
            }
            if captured.is_empty() {
                continue;
            }
            for _ in 0..8 {
                let mut d = captured[rng.below(captured.len())].clone();
                match rng.below(5) {
                    0 => {}
                    1 => {
                        for _ in 0..1 + rng.below(3) {
                            let i = rng.below(d.len());
                            d[i] ^= 1 << rng.below(8);
                        }
                    }
                    2 => d.truncate(rng.below(d.len())),
                    3 => d.extend(std::iter::repeat_n(0u8, 1 + rng.below(64))),
                    _ => {
                        d = (0..1 + rng.below(1400)).map(|_| rng.next() as u8).collect();
                        if rng.below(2) == 0 && d.len() > 4 {
                            d[..4].copy_from_slice(b"IMGC");
                        }
                    }
                }
                let to = match (rng.below(4), master) {
                    (0, Some(m)) => m,
                    _ => group,
                };
                if s.send_to(&d, to).is_ok() {
                    sent += 1;
                }
            }
        }
        println!("captured {seen} datagrams of the session");
        println!("sent {sent} hostile datagrams");
        Ok(())
    }

    /// Sends forged Announces of session `name` (valid under the keyless check of their own
    /// made-up run) for 2 seconds: `wrong-id` (a plausible small disk), `huge` (more chunks than
    /// a session carries), `larger` (a disk of `size` bytes), `broken` (session info cut short).
    fn announce(name: &str, port: u16, kind: &str, size: u64) -> Result<()> {
        let (s, group) = group_socket(name, port)?;
        let n = SessionName::new(name)?;
        let sid = 0xF04E_0000_0000_0000 | u64::from(kind.len() as u32) << 8;
        let key = PacketKey::new(None, &n.hash(), sid);
        let geometry = |disk: u64, chunk: u32| Geometry::new(disk, chunk, Level::FASTEST);
        let info = match kind {
            "wrong-id" => SessionInfo {
                geometry: geometry(4 << 20, 1 << 20)?,
                root: None,
                image: "forged".into(),
            }
            .encode(),
            "huge" => SessionInfo {
                geometry: geometry(1 << 62, 64 << 20)?,
                root: None,
                image: "forged".into(),
            }
            .encode(),
            "larger" => SessionInfo {
                geometry: geometry(size, 1 << 20)?,
                root: None,
                image: "forged".into(),
            }
            .encode(),
            _ => {
                let mut b = SessionInfo {
                    geometry: geometry(4 << 20, 1 << 20)?,
                    root: None,
                    image: "forged".into(),
                }
                .encode();
                b.truncate(b.len() - 3);
                b
            }
        };
        let end = Instant::now() + Duration::from_secs(2);
        let mut seq = 1;
        while Instant::now() < end {
            let p = Packet {
                name_hash: n.hash(),
                session_id: sid,
                sender: MASTER,
                seq,
                unicast: false,
                body: Body::Announce(Announce {
                    phase: Phase::Gathering,
                    yields: false,
                    object_count: 4,
                    symbol_size: 1377,
                    window: 64,
                    session_info: info.clone(),
                }),
            };
            s.send_to(&wire::seal(&p, &key), group)?;
            seq += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("announced {kind} {} times", seq - 1);
        Ok(())
    }

    /// Announces the session as a master of the previous protocol version would, every 100 ms
    /// for `secs` seconds: a sealed Announce of this release with the version byte one lower.
    fn old_release(name: &str, port: u16, secs: f64) -> Result<()> {
        let (s, group) = group_socket(name, port)?;
        let n = SessionName::new(name)?;
        let sid = 0x01D0_0001;
        let key = PacketKey::new(None, &n.hash(), sid);
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut seq = 1;
        println!("sending");
        while Instant::now() < end {
            let p = Packet {
                name_hash: n.hash(),
                session_id: sid,
                sender: MASTER,
                seq,
                unicast: false,
                body: Body::Start { clients: 1 },
            };
            let mut d = wire::seal(&p, &key);
            d[4] = wire::VERSION - 1;
            s.send_to(&d, group)?;
            seq += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("sent {} packets of version {}", seq - 1, wire::VERSION - 1);
        Ok(())
    }

    /// Watches the group; as soon as it sees a packet of the master's run (its Announce while it
    /// gathers, then its data) it forges End packets with a wrong root hash under the run's keyless
    /// check key, every 50 ms, for `secs` seconds.
    fn forge_end(name: &str, port: u16, secs: f64) -> Result<()> {
        let (s, group) = group_socket(name, port)?;
        // Waits (at most a minute) for the transfer to begin, then forges for `secs`: under
        // load a master may start long after this forger, and only Ends that reach the clients
        // during the transfer test anything.
        let mut end = Instant::now() + Duration::from_secs(60);
        let mut buf = vec![0u8; 65536];
        let mut forged = 0u64;
        let mut last: Option<Header> = None;
        let mut next_forge = Instant::now();
        s.set_read_timeout(Some(Duration::from_millis(5)))?;
        while Instant::now() < end {
            if let Some((n, _)) = recv(&s, &mut buf) {
                if let Ok(h) = Header::peek(&buf[..n]) {
                    if h.kind == 5 && !h.unicast() {
                        if last.is_none() {
                            end = Instant::now() + Duration::from_secs_f64(secs);
                        }
                        last = Some(h);
                    }
                }
            }
            if let Some(h) = last.filter(|_| Instant::now() >= next_forge) {
                next_forge = Instant::now() + Duration::from_millis(50);
                // Data has the short header, without the name hash: the forger knows the name.
                let name_hash = SessionName::new(name)?.hash();
                let key = PacketKey::new(None, &name_hash, h.session_id);
                let p = Packet {
                    name_hash,
                    session_id: h.session_id,
                    sender: MASTER,
                    seq: h.seq + 1,
                    unicast: false,
                    body: Body::End {
                        trailer: vec![0xF0; 32],
                    },
                };
                s.send_to(&wire::seal(&p, &key), group)?;
                forged += 1;
            }
        }
        println!("forged {forged} End packets");
        Ok(())
    }

    /// Records the first Announce of the session seen on the group into `file` (up to 20 s).
    fn capture(name: &str, port: u16, file: &str) -> Result<()> {
        let (s, _) = group_socket(name, port)?;
        let end = Instant::now() + Duration::from_secs(20);
        let mut buf = vec![0u8; 65536];
        while Instant::now() < end {
            if let Some((n, _)) = recv(&s, &mut buf) {
                if Header::peek(&buf[..n]).is_ok_and(|h| h.kind == 1) {
                    std::fs::write(file, &buf[..n])?;
                    println!("captured announce ({n} bytes)");
                    return Ok(());
                }
            }
        }
        Err("no announce seen".into())
    }

    /// Sends the recorded datagram in `file` to the group every 300 ms for `secs` seconds.
    fn replay(name: &str, port: u16, file: &str, secs: f64) -> Result<()> {
        let (s, group) = group_socket(name, port)?;
        let d = std::fs::read(file)?;
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut n = 0;
        while Instant::now() < end {
            s.send_to(&d, group)?;
            n += 1;
            std::thread::sleep(Duration::from_millis(300));
        }
        println!("replayed the recorded announce {n} times");
        Ok(())
    }
}

/// A 48 MiB GPT disk file with one ext4 partition made by mkfs.ext4 itself (at an offset, from a
/// directory: no root, no mount), holding a few files, and a deleted-file leftover in its free
/// space (random bytes the map leaves out).
fn gpt_ext4_disk(lab: &Lab) -> std::path::PathBuf {
    let dir = lab.path("tree");
    std::fs::create_dir_all(dir.join("etc")).expect("tree");
    for (i, len) in [(0u64, 3_000_000usize), (1, 50_000), (2, 7)] {
        let mut x = 0x2545_f491_4f6c_dd1du64 ^ i;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(dir.join(format!("etc/f{i}")), data).expect("file");
    }
    let disk = lab.path("gpt.raw");
    let f = std::fs::File::create(&disk).expect("disk");
    f.set_len(48 << 20).expect("size");
    drop(f);
    let run = |cmd: &str, args: &[&str]| {
        let o = Command::new(cmd)
            .args(args)
            .env(
                "PATH",
                format!(
                    "{}:/usr/sbin:/sbin",
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .output()
            .expect(cmd);
        assert!(
            o.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let d = disk.to_str().expect("path");
    run("sgdisk", &["-o", "-n", "1:2048:0", "-t", "1:8300", d]);
    // The partition ends at the last usable LBA: 48 MiB less 1 MiB less 34 sectors.
    let part_kib = ((48u64 << 20) - (1 << 20) - 34 * 512) / 1024;
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "offset=1048576",
            "-d",
            dir.to_str().expect("dir"),
            d,
            &format!("{part_kib}k"),
        ],
    );
    disk
}

#[test]
fn a_mapped_disk_over_multicast_lands_with_its_table_files_and_image_safe_record() {
    let lab = lab();
    let disk = gpt_ext4_disk(&lab);
    let out = lab.run(&format!(
        r#"
lab_up 3
for i in 1 2; do
  lab_spawn h$i "$DIR/c$i.log" "$IMG" -session zisd -client -disk="$DIR/c$i.raw" >/dev/null
  pids="${{pids:-}} $LAB_LAST_PID"
done
sleep 0.3
lab_exec h0 timeout 120 "$IMG" -session zisd -master -clients=2 -disk="{disk}" >"$DIR/m.out" 2>"$DIR/m.log"
echo "master exit $?"
lab_wait 30 $pids >/dev/null 2>&1
for i in 1 2; do
  sgdisk -v "$DIR/c$i.raw" >"$DIR/v$i.log" 2>&1 && grep -q "No problems found" "$DIR/v$i.log" && echo "table $i ok"
  dd if="$DIR/c$i.raw" of="$DIR/p$i.ext4" bs=1M skip=1 status=none
  e2fsck -fn "$DIR/p$i.ext4" >"$DIR/fsck$i.log" 2>&1 && echo "fsck $i ok"
  for f in f0 f1 f2; do
    debugfs -R "dump /etc/$f $DIR/$f.$i" "$DIR/p$i.ext4" >/dev/null 2>&1
    cmp -s "$DIR/tree/etc/$f" "$DIR/$f.$i" && echo "file $f on $i ok"
  done
  "$IMG" info zisd "$DIR/c$i.raw" >"$DIR/zisd$i.log" 2>&1; echo "zisd $i exit $?"
done
"#,
        disk = disk.display()
    ));
    let text = lab.show(
        &out,
        &[
            "m.out",
            "m.log",
            "c1.log",
            "c2.log",
            "zisd1.log",
            "fsck1.log",
        ],
    );
    assert!(text.contains("master exit 0"), "{text}");
    let table = lab.log("m.out");
    assert_eq!(
        table.matches("image-safe record at byte 1044480").count(),
        2,
        "{text}"
    );
    for i in 1..=2 {
        for want in [
            format!("table {i} ok"),
            format!("fsck {i} ok"),
            format!("file f0 on {i} ok"),
            format!("file f1 on {i} ok"),
            format!("file f2 on {i} ok"),
            format!("zisd {i} exit 0"),
        ] {
            assert!(text.contains(&want), "{want}\n{text}");
        }
        let z = lab.log(&format!("zisd{i}.log"));
        assert!(z.contains("session: zisd"), "{z}");
        assert!(z.contains("master: 10.77.0.10"), "{z}");
        assert!(
            z.contains("gpt.raw of"),
            "the image name names the master's disk: {z}"
        );
    }
    // Only the table and the used blocks went over the wire: far less than the 48 MiB disk
    // (about 3 MiB of files, the rest free or zero).
    let sent = table
        .lines()
        .find(|l| l.starts_with("image "))
        .and_then(|l| l.split("; ").find(|p| p.contains(" sent")))
        .and_then(|p| p.split(" sent").next())
        .map(str::to_string)
        .unwrap_or_default();
    let mib = match sent.split_once(' ') {
        Some((n, "KiB")) => n.parse::<f64>().unwrap_or(f64::MAX) / 1024.0,
        Some((n, "MiB")) => n.parse::<f64>().unwrap_or(f64::MAX),
        _ => f64::MAX,
    };
    assert!(mib < 8.0, "sent {sent}\n{text}");
}

/// Issue 12, point 5: a master with `-querier` puts valid IGMPv2 General Queries on its segment,
/// where another device hears them (and so does not warn); with no querier left, a device warns
/// once that none answers. The detection window is shortened with the test-only variable.
#[test]
fn a_querier_master_sends_general_queries_and_a_segment_without_one_is_warned_about() {
    let lab = lab();
    lab.sample("disk.raw", 4, 29);
    let out = lab.run(
        r#"
lab_up 3
# An independent reader of the wire: a raw IGMP socket on h2, for at most 30 s (a loaded
# machine may take seconds to start the two debug masters).
cat >"$DIR/listen.py" <<'PY'
import socket, struct, sys, time
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return s
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
s.settimeout(0.5)
end = time.time() + 30
while time.time() < end:
    try:
        p = s.recv(1500)
    except socket.timeout:
        continue
    ihl = (p[0] & 15) * 4
    if p[ihl] != 0x11:
        continue
    src = socket.inet_ntoa(p[12:16]); dst = socket.inet_ntoa(p[16:20])
    igmp = p[ihl:struct.unpack("!H", p[2:4])[0]]
    print("query from", src, "to", dst, "ttl", p[8], "ihl", ihl, "options", p[20:ihl].hex(),
          "igmp", igmp.hex(), "ip sum ok", csum(p[:ihl]) == 0xffff, "igmp sum ok", csum(igmp) == 0xffff)
    sys.exit(0)
print("no query heard")
sys.exit(1)
PY
lab_spawn h2 "$DIR/listen.log" python3 "$DIR/listen.py" >/dev/null; l=$LAB_LAST_PID
# h1 watches with a 3 s window; the querier starts within it.
lab_spawn h1 "$DIR/watch.log" env IMGCAST_TEST_QUERIER_WINDOW_MS=3000 "$IMG" -session igmpw -master -clients=1 -disk="$DIR/disk.raw" >/dev/null; w=$LAB_LAST_PID
for _ in $(seq 1 150); do grep -q "group 231" "$DIR/watch.log" 2>/dev/null && break; sleep 0.1; done
sleep 0.3
lab_spawn h0 "$DIR/q.log" "$IMG" -session igmpq -master -querier -clients=1 -disk="$DIR/disk.raw" >/dev/null; q=$LAB_LAST_PID
lab_wait 32 $l; echo "listener exit $?"
sleep 4
lab_kill $q $w
# No querier on the segment now: a device warns within its window.
lab_spawn h2 "$DIR/alone.log" env IMGCAST_TEST_QUERIER_WINDOW_MS=1500 "$IMG" -session igmpa -master -clients=1 -disk="$DIR/disk.raw" >/dev/null; a=$LAB_LAST_PID
for _ in $(seq 1 200); do grep -q "no membership query" "$DIR/alone.log" 2>/dev/null && break; sleep 0.1; done
lab_kill $a
"#,
    );
    let text = lab.show(&out, &["listen.log", "q.log", "watch.log", "alone.log"]);
    assert!(text.contains("listener exit 0"), "{text}");
    let heard = lab.log("listen.log");
    assert!(
        heard.contains("query from 10.77.0.10 to 224.0.0.1 ttl 1 ihl 24 options 94040000"),
        "{text}"
    );
    // Type 0x11, Max Response Time 10 s, checksum, group 0.0.0.0.
    assert!(heard.contains("igmp 1164ee9b00000000"), "{text}");
    assert!(heard.contains("ip sum ok True igmp sum ok True"), "{text}");
    assert!(!lab.log("q.log").contains("querier:"), "{text}");
    assert!(!lab.log("watch.log").contains("IGMP"), "{text}");
    let alone = lab.log("alone.log");
    assert_eq!(
        alone.matches("no membership query heard on eth0").count(),
        1,
        "{text}"
    );
    assert!(alone.contains("-querier"), "{text}");
}
