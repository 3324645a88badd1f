// Command peerprobe dials the shim socket named in MINE_E2E_PEER_SOCKET,
// calls Connect and prints "served" or "refused: ERROR". The socket test
// runs it as another uid.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	v3 "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/ttrpc"
)

func main() {
	conn, err := net.Dial("unix", os.Getenv("MINE_E2E_PEER_SOCKET"))
	if err != nil {
		fmt.Println("refused: dial:", err)
		return
	}
	c := ttrpc.NewClient(conn)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := v3.NewTTRPCTaskClient(c).Connect(ctx, &v3.ConnectRequest{ID: os.Getenv("MINE_E2E_PEER_ID")}); err != nil {
		fmt.Println("refused:", err)
		return
	}
	fmt.Println("served")
}
