//! The raw CRI floor on this machine: what containerd itself costs for the steps of a recreate.
//! Run as root: `cargo bench --bench cri_floor` (`RELAUNCH_BENCH_ITERATIONS` sets the run count).

// Benchmark code: an unwrap, expect or panic stops the run where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

#[tokio::main]
async fn main() {
    let runs = support::iterations(30);
    let containerd = relaunch_testbed::Containerd::start().await.expect(
        "start containerd (run as root with containerd, runc and busybox-static installed)",
    );
    let client = containerd.client().await.expect("connect");
    let version = client.version().await.expect("version");
    let floor = support::measure_floor(&containerd, &client, runs).await;

    println!(
        "raw CRI floor — {} {} on {} cores",
        version.runtime_name,
        version.runtime_version,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{}", support::header());
    for row in floor.rows() {
        println!("{row}");
    }
}
