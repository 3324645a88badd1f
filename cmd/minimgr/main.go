package main

import (
	"os"
	"os/signal"

	"golang.org/x/sys/unix"

	"github.com/mineshim/mine/pkg/minimgr"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == minimgr.LoggerArg {
		os.Exit(minimgr.RunLogger(os.Args[2]))
	}
	// A reader of our output that goes away (`minimgr run ... | head -1`)
	// gives EPIPE, not death by SIGPIPE: the container's output goes on to
	// its log and --rm is honoured. A handler (not SIG_IGN) so that the
	// processes minimgr starts get SIGPIPE's default back.
	signal.Notify(make(chan os.Signal, 1), unix.SIGPIPE)
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
