//! A slow machine in the room and a bottleneck on the path (issue 12): real `img` processes on
//! the namespace LAN, with tbf on the bridge port towards a client, so packets beyond its rate
//! are dropped as a switch port would drop them.

use imgcast_testlab::{same, Lab};
use serde_json::Value;

fn lab() -> Lab {
    Lab::new(env!("CARGO_BIN_EXE_img"))
}

/// The master's JSON table.
fn table(lab: &Lab, text: &str) -> Value {
    let out = lab.log("master.out");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("master JSON ({e}):\n{text}"))
}

/// The rates the master printed once a second while sending, in Mbit/s.
fn rates(log: &str) -> Vec<f64> {
    log.lines()
        .filter_map(|l| l.strip_prefix("sending at "))
        .filter_map(|l| l.split(' ').next())
        .filter_map(|v| v.parse().ok())
        .collect()
}

#[test]
fn one_client_behind_a_100_mbit_port_is_moved_and_the_other_five_go_on() {
    let lab = lab();
    lab.sample("disk.raw", 96, 12);
    let out = lab.run(
        r#"
lab_up 7
lab_rate h6 100mbit in
for i in 1 2 3 4 5 6; do
  lab_spawn h$i "$DIR/c$i.log" "$IMG" -session room -client -disk="$DIR/c$i.raw" >/dev/null
  pids="${pids:-} $LAB_LAST_PID"
done
sleep 0.3
lab_exec h0 timeout 150 "$IMG" -session room -master -clients=6 -timeout=30s -disk="$DIR/disk.raw" --json >"$DIR/master.out" 2>"$DIR/master.log"
echo "master exit $?"
lab_wait 30 $pids >/dev/null 2>&1
"#,
    );
    let logs = ["master.log", "master.out", "c1.log", "c5.log", "c6.log"];
    let text = lab.show(&out, &logs);
    assert!(text.contains("master exit 0"), "{text}");
    for i in 1..=6 {
        assert!(
            same(&lab.path("disk.raw"), &lab.path(&format!("c{i}.raw"))),
            "client {i} differs\n{text}"
        );
    }
    let m = lab.log("master.log");
    assert!(m.contains("10.77.0.16:"), "{text}");
    assert!(m.contains("moved to the follow-up run"), "{text}");
    assert!(m.contains("follow-up run 2 for 1 client"), "{text}");
    let t = table(&lab, &text);
    assert_eq!(t["runs"], 2, "{text}");
    let rows = t["clients"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 6, "{text}");
    let mut first_run = Vec::new();
    for r in &rows {
        assert_eq!(r["result"], "done", "{text}");
        let slow = r["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("10.77.0.16:"));
        if slow {
            assert_eq!(
                r["run"], 2,
                "the slow client is served by the follow-up\n{text}"
            );
            assert!(
                r["moved"].is_string(),
                "the table says why it was moved\n{text}"
            );
        } else {
            assert_eq!(r["run"], 1, "the others finish in the first run\n{text}");
            first_run.push(r["seconds"].as_f64().unwrap_or(f64::MAX));
        }
    }
    // The five did not wait for the slow one: its run alone pushes the image through 100 Mbit/s.
    let c6 = lab.log("c6.log");
    assert!(c6.contains("follow-up"), "{text}");
    println!("first run clients finished in {first_run:?} s");
}

#[test]
fn a_100_mbit_bottleneck_below_the_start_rate_is_found_and_held() {
    let lab = lab();
    lab.sample("disk.raw", 192, 13);
    let out = lab.run(
        r#"
lab_up 3
for i in 1 2; do
  lab_rate h$i 100mbit in
  lab_spawn h$i "$DIR/c$i.log" "$IMG" -session neck -client -disk="$DIR/c$i.raw" >/dev/null
  pids="${pids:-} $LAB_LAST_PID"
done
sleep 0.3
lab_exec h0 timeout 120 "$IMG" -session neck -master -clients=2 -timeout=30s -disk="$DIR/disk.raw" --json >"$DIR/master.out" 2>"$DIR/master.log"
echo "master exit $?"
lab_wait 30 $pids >/dev/null 2>&1
"#,
    );
    let text = lab.show(&out, &["master.log", "master.out", "c1.log", "c2.log"]);
    assert!(text.contains("master exit 0"), "{text}");
    for i in 1..=2 {
        assert!(
            same(&lab.path("disk.raw"), &lab.path(&format!("c{i}.raw"))),
            "client {i} differs\n{text}"
        );
    }
    // The rate starts at 200 Mbit/s; after the first second it must sit at the bottleneck: 100
    // Mbit/s of frames are about 97 Mbit/s of UDP payload (what the master counts), so 90% of the
    // bottleneck is 87.5 Mbit/s here.
    let r = rates(&lab.log("master.log"));
    assert!(r.len() >= 3, "too few rate lines\n{text}");
    // The controller probes above the rate it holds and backs off again, so single samples swing
    // by ±30%; the median of the samples after the first must sit between 90% of the bottleneck
    // and 125 Mbit/s, well below the 200 Mbit/s start that a controller which never backs off
    // would keep.
    let mut held: Vec<f64> = r[1..].to_vec();
    held.sort_by(f64::total_cmp);
    let median = (held[(held.len() - 1) / 2] + held[held.len() / 2]) / 2.0;
    assert!(
        (87.5..=125.0).contains(&median),
        "held {median:.1} Mbit/s at a 100 Mbit/s bottleneck (rates {r:?})\n{text}"
    );
    let t = table(&lab, &text);
    let goodput = t["bytes_sent"].as_f64().unwrap_or(0.0) * 8.0
        / t["seconds"].as_f64().unwrap_or(f64::MAX)
        / 1e6;
    println!("rates {r:?}; {goodput:.1} Mbit/s over the whole run");
}
