// Command pause is the sandbox process of the pods of the CRI tests, like
// Kubernetes' pause container: it holds the pod's namespaces open until it is
// told to stop (SIGINT or SIGTERM, or SIGKILL), and reaps the orphans it
// inherits as PID 1 of a shared PID namespace.
//
// The CRI tests build it statically (CGO_ENABLED=0) and put it into an image
// of its own, so containerd never pulls a pause image.
package main
