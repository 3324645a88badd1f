// Package task serves containerd's Task API (runtime/task/v3) over ttrpc as a
// thin adapter onto package process: each handler decodes its request, calls
// the domain, converts the error to its wire status once (errgrpc) and
// returns. Lifecycle events come from the domain in order and are mapped
// here to containerd's event types.
//
// Publisher forwards events to containerd's Events service (TTRPC_ADDRESS)
// from exactly one goroutine, in order, through a bounded queue: Publish
// never blocks; an event that cannot be delivered is retried in place for a
// bounded time, then dropped with an error log. Close drains the queue.
package task
