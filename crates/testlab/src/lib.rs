//! Test support for imgcast's end-to-end tests: real `img` processes on a LAN
//! of network namespaces, one lab at a time, fed with deterministic sample
//! disks. A dev-dependency only; never part of the `img` binary.
//!
//! ```text
//!  test ─▶ Lab::new(img) ─▶ one_at_a_time()   (mutex in the process +
//!            │                                  flock across test binaries)
//!            ├─ sample("disk.raw", mib, seed)  ─▶ $DIR/disk.raw
//!            └─ run(script) ─▶ unshare -Urnm bash  (lab/lab.sh, lab_init,
//!                 │                                 $IMG, $DIR, /usr/sbin)
//!                 └─▶ lab_up N: hosts h0.. on a bridge, inside that namespace
//!  test ─▶ in_private_netns(name) ─▶ the test again under unshare -Urn,
//!                                    multicast on lo
//! ```
//!
//! # One lab at a time
//! A lab runs several processes whose timeouts the tests check; on a small
//! machine two labs at once starve each other into those timeouts. [`Lab`]
//! and [`in_private_netns`] hold [`one_at_a_time`] for as long as they run:
//! a mutex against the other tests of the same binary and an exclusive
//! `flock` on a fixed file in the temporary directory against every other
//! test binary (of this checkout or another) that uses this crate.
//!
//! # The network rule
//! No test sends a packet outside loopback or the namespaces it made itself.
//! Every script here runs in a fresh private user+network(+mount) namespace
//! that starts with nothing but `lo`, and lab.sh refuses to build a lab in a
//! namespace with any other interface, so a test can never reach a real NIC.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod lab;
mod lock;
mod netns;
mod sample;

pub use lab::{Lab, LAB_SH};
pub use lock::{one_at_a_time, OneAtATime};
pub use netns::in_private_netns;
pub use sample::{same, sample_disk, SAMPLE_TAIL};

/// `PATH` with /usr/sbin and /sbin added: `ip`, `nft` and `tc` live there and
/// a test may run without them on its path.
fn path_with_sbin() -> String {
    format!(
        "{}:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    )
}
