#!/bin/sh
# Regenerates the fuzz seed fixtures in this directory (see README.md).
set -e
cd "$(dirname "$0")"
rm -f *.qcow2 base.raw
qemu-img create -q -f qcow2 -o cluster_size=512 v3.qcow2 64k
qemu-io -c 'write -P 0x61 0 1536' -c 'write -z 4k 1k' -c 'discard 8k 512' v3.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=512 v2.qcow2 64k
qemu-io -c 'write -P 0x62 1k 1k' v2.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=1 refcount1.qcow2 32k
qemu-io -c 'write -P 0x63 0 512' refcount1.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=16k,extended_l2=on extl2.qcow2 64k
qemu-io -c 'write -P 0x64 1k 512' -c 'write -z 4k 512' extl2.qcow2 >/dev/null
qemu-img create -q -f raw base.raw 8k
qemu-io -f raw -c 'write -P 0x65 0 8k' base.raw >/dev/null
qemu-img convert -c -O qcow2 -o cluster_size=512 -f raw base.raw zlib.qcow2
qemu-img convert -c -O qcow2 -o cluster_size=512,compression_type=zstd -f raw base.raw zstd.qcow2
qemu-img create -q -f qcow2 -o cluster_size=512 -b base.raw -F raw backing.qcow2 16k
qemu-io -c 'write -P 0x66 512 512' backing.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=512 snapshot.qcow2 16k
qemu-io -c 'write -P 0x67 0 1k' snapshot.qcow2 >/dev/null
qemu-img snapshot -c snap1 snapshot.qcow2
qemu-io -c 'write -P 0x68 0 512' snapshot.qcow2 >/dev/null
