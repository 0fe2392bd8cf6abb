#!/bin/sh
# Regenerates the Go code for protocol/proto/*.proto (run by `make proto`).
# protoc comes from Debian's protobuf-compiler; both plugins are pinned as
# tools in go.mod, so the output only changes when the .proto files or the
# pinned versions do (CI regenerates and checks `git diff --exit-code`).
set -eu
cd "$(dirname "$0")/.."
bin="$PWD/build/bin"
mkdir -p "$bin"
go build -o "$bin/" google.golang.org/protobuf/cmd/protoc-gen-go github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc
rm -f protocol/grpc/*.pb.go protocol/types/*.pb.go
PATH="$bin:$PATH" protoc \
	-I protocol/proto -I /usr/include \
	--go_out=. --go_opt=module=github.com/keelvm/keel \
	--go-ttrpc_out=. --go-ttrpc_opt=module=github.com/keelvm/keel \
	protocol/proto/agent.proto protocol/proto/oci.proto protocol/proto/health.proto protocol/proto/types.proto
# A container init (keel-agent re-executed by libcontainer) never uses the
# protocol: its descriptors are not registered there (see
# protocol/internal/containerinit). The sed below needs GNU sed (\n in the
# replacement, 0,/re/ addresses, -i without a suffix): Debian's, as in CI.
# Every protoc-gen-go file must have the init this rewrites; one that does
# not (a new protoc-gen-go layout) fails here rather than being left
# registering its descriptors in container inits. The ttrpc files have no
# init.
for f in protocol/grpc/*.pb.go protocol/types/*.pb.go; do
	case "$f" in *_ttrpc.pb.go) continue ;; esac
	if ! grep -q '^func init() { file_.*_proto_init() }$' "$f"; then
		echo "generate.sh: $f: no 'func init() { file_..._proto_init() }' to guard with containerinit.Running" >&2
		exit 1
	fi
	# The message and enum info tables become arrays instead of slices
	# make()'d by a package variable's initialiser: zeroed memory that only
	# a process using the protocol touches (the agent), where each
	# container init allocated and cleared them (43 KB for protocol/grpc).
	sed -i \
		-e 's#^var \(file_.*_proto_\(msg\|enum\)Types\) = make(\[\]protoimpl\.\(MessageInfo\|EnumInfo\), \([0-9]*\))$#var \1 [\4]protoimpl.\3#' \
		-e 's#^\(\t*\(Message\|Enum\)Infos: *file_.*_proto_\(msg\|enum\)Types\),$#\1[:],#' \
		-e 's|^func init() { \(file_.*_proto_init\)() }$|func init() {\n\tif containerinit.Running() {\n\t\treturn\n\t}\n\t\1()\n}|' \
		-e '0,/^import (/s|^import (|import (\n\tcontainerinit "github.com/keelvm/keel/protocol/internal/containerinit"|' \
		"$f"
	gofmt -w "$f"
done
if grep -n 'make(\[\]protoimpl\.' protocol/grpc/*.pb.go protocol/types/*.pb.go; then
	echo "generate.sh: info tables still made at package initialisation (a new protoc-gen-go layout?)" >&2
	exit 1
fi
gofmt -l protocol/grpc protocol/types
