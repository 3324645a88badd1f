// Command allocator touches memory until the kernel kills it: the OOM test's
// workload. It prints "allocating" first, so a test knows it runs.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Println("allocating")
	var chunks [][]byte
	for {
		b := make([]byte, 1<<20)
		for i := range b {
			b[i] = byte(i)
		}
		chunks = append(chunks, b)
		if len(chunks) > 1<<14 {
			// 16 GiB without a kill: no limit is in force.
			fmt.Fprintln(os.Stderr, "no OOM kill")
			os.Exit(2)
		}
	}
}
