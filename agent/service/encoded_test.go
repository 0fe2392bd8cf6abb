package service

import "github.com/keelvm/keel/agent/server"

// The agent's Service answers ReadStdout/ReadStderr with responses encoded
// in place (containers.RPC's ReadStdoutEncoded, promoted through
// Containers); agent/server only uses that path when this holds.
var _ server.EncodedStreamReader = (*Service)(nil)
