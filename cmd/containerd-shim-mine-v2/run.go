package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
)

// Version is the shim's version, set at link time (-X main.Version=...).
var Version = ""

// shimName is what the shim calls itself in logs and errors.
const shimName = "containerd-shim-mine-v2"

func version() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// flags are the command line containerd gives every shim invocation.
type flags struct {
	namespace     string
	id            string
	address       string // containerd's gRPC address
	publishBinary string
	bundle        string // delete only; else the working directory
	debug         bool
	version       bool
	info          bool
	action        string // start, delete, or "" for the daemon
}

func parseFlags(args []string, stderr io.Writer) (flags, error) {
	var f flags
	fs := flag.NewFlagSet(shimName, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.namespace, "namespace", "", "namespace of the shim's containers")
	fs.StringVar(&f.id, "id", "", "id of the task")
	fs.StringVar(&f.address, "address", "", "gRPC address of containerd")
	fs.StringVar(&f.publishBinary, "publish-binary", "", "containerd binary (events go to TTRPC_ADDRESS instead)")
	fs.StringVar(&f.bundle, "bundle", "", "bundle path (delete; default: the working directory)")
	fs.BoolVar(&f.debug, "debug", false, "log at debug level")
	fs.BoolVar(&f.version, "v", false, "print the version and exit")
	fs.BoolVar(&f.version, "version", false, "print the version and exit")
	fs.BoolVar(&f.info, "info", false, "read runtime options on stdin, print RuntimeInfo on stdout")
	// Accepted for compatibility with containerd 1.x command lines.
	fs.String("socket", "", "unused")
	fs.String("debug-socket", "", "unused")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	f.action = fs.Arg(0)
	return f, nil
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	f, err := parseFlags(args, stderr)
	if err != nil {
		return 2
	}
	if f.version {
		fmt.Fprintf(stdout, "%s:\n  Version:  %s\n  Go version: %s\n", filepath.Base(os.Args[0]), version(), goVersion())
		return 0
	}
	if f.info {
		err = printInfo(stdin, stdout)
	} else {
		switch f.action {
		case "start":
			err = start(f, stdin, stdout)
		case "delete":
			err = deleteAction(f, stdout, stderr)
		case "":
			err = serve(f)
		default:
			err = fmt.Errorf("unknown action %q", f.action)
		}
	}
	if err != nil {
		// containerd shows stderr of a failed start or delete.
		fmt.Fprintf(stderr, "%s: %v\n", shimName, err)
		return 1
	}
	return 0
}

func goVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.GoVersion
	}
	return "unknown"
}
