package main

import "github.com/mineshim/mine/pkg/sandbox"

// A pod's namespace holder is this binary re-executed: it must take over
// before main, on the main thread that init runs on.
func init() { sandbox.RunHolderIfAsked(dropCleanExePages) }
