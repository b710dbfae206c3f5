module cy-sidecar/bench/load

// Standard library only: the load generator builds offline, with nothing
// but the Go toolchain (net/http speaks unencrypted HTTP/2 since Go 1.24).
go 1.24
