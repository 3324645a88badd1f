// Command minebench runs the full comparison of package bench (mine against
// containerd-shim-runc-v2, same containerd, interleaved), prints the ratio
// table, and writes the raw numbers as JSON and the idle-memory plot as SVG.
// hack/bench.sh builds the binaries and calls it; `make bench` calls that.
//
//	go run ./test/bench/minebench -json docs/bench.json -svg docs/bench-rss.svg
//
// It needs root, runc, a static busybox and containerd's binaries (see
// package bench). Before measuring it waits, for at most -load-wait, until
// the 1-minute load average is at most -load-max, and it records the load
// before and after in the JSON.
package main
