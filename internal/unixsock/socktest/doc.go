// Package socktest makes, for tests, a unix socket that a live server owns
// but that cannot take one more connection: its backlog is full, as at a
// server too busy to accept.
package socktest
