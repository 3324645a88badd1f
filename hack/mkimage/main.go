package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/mineshim/mine/test/e2e/imagebuild"
)

func main() {
	out := flag.String("o", "", "write the image tar to this `file` (required)")
	ref := flag.String("ref", imagebuild.DefaultRef, "image `reference` recorded in index.json")
	busybox := flag.String("busybox", imagebuild.DefaultBusybox, "statically linked busybox `binary` to copy into the image")
	flag.Parse()
	if *out == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: mkimage -o FILE [-ref REF] [-busybox PATH]")
		os.Exit(2)
	}
	res, err := imagebuild.WriteFile(*out, imagebuild.Options{Busybox: *busybox, Ref: *ref})
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
	fmt.Printf("%s %s\n", res.Ref, res.ManifestDigest)
}
