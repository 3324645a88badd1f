package main

import (
	"os"
	"testing"
)

// envTestAsShim makes the test binary act as the shim: the tests that
// drive `start` run this binary, and the daemon it launches is this binary
// again (os.Executable), with the environment inherited.
const envTestAsShim = "MINE_TEST_AS_SHIM"

func TestMain(m *testing.M) {
	if os.Getenv(envTestAsShim) != "" {
		os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}
