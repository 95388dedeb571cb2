# soak-driver.py: the workload of scripts/soak.sh for one disk (run by it
# with /usr/bin/python3, which has libnbd's Python module).
#
#   soak-driver.py SOCKET SIZE STOPFILE NAME
#
# Keeps 64 commands in flight on the NBD export at unix SOCKET: reads,
# writes, trims, write-zeroes and flushes on 4 KiB blocks, never two on
# the same block at once. Every block written holds a pattern naming the
# block and a generation, so its content says which write it came from. A
# model of the disk says, per block, what the last flush made durable and
# which writes since then may or may not have landed. Reads are checked
# against the model as they complete. When the server dies (soak.sh kills
# it), the driver reconnects to its successor and reads the whole disk: a
# block no write touched since its last flush must hold exactly what that
# flush made durable; any other block must hold one of the values its
# outstanding writes could have left. It stops when STOPFILE exists, after a
# flush and a final full check, and exits 1 if any check failed.
import os
import random
import struct
import sys
import time

import nbd

BS = 4096
QD = 64
UNKNOWN = -1  # trimmed: may read as zeroes or as what was there

sock, size, stopfile, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
N = size // BS
# A fresh image's blocks are UNKNOWN: an encrypted one reads as noise.
durable = [UNKNOWN] * N  # value the last flush made durable (0 = zeroes)
cur = [UNKNOWN] * N  # value of the last completed write
pend = [dict() for _ in range(N)]  # seq -> value of writes not yet durable
busy = set()  # blocks an in-flight command covers
done = []  # (seq, blocks, value) completed and not yet covered by a flush
seq = 0
gen = 0
stats = dict(read=0, write=0, trim=0, zero=0, flush=0, bytes=0, restarts=0,
             verified=0, exact=0, mismatches=0)
rnd = random.Random(os.getpid())


def log(msg):
    print(f"{time.strftime('%H:%M:%S')} {name}: {msg}", flush=True)


def pattern(b, g):
    return struct.pack("<QQ", b, g) * (BS // 16)


ZERO = bytes(BS)


def decode(b, data):
    """The value a block's content stands for, or None if it is no value."""
    if data == ZERO:
        return 0
    blk, g = struct.unpack_from("<QQ", data)
    if blk == b and g > 0 and data == pattern(b, g):
        return g
    return None


def fail(msg):
    stats["mismatches"] += 1
    if stats["mismatches"] <= 20:
        log("MISMATCH " + msg)


def connect():
    t0 = time.time()
    while True:
        if os.path.exists(stopfile) and time.time() - t0 > 120:
            log("FINAL the server did not come back")
            sys.exit(2)
        try:
            h = nbd.NBD()
            h.connect_unix(sock)
            if h.get_size() != size:
                raise SystemExit(f"{name}: export size {h.get_size()} != {size}")
            return h
        except nbd.Error:
            time.sleep(0.2)


def verify(h, final):
    """Read the whole disk and check it against the model."""
    step = 256 * BS
    for off in range(0, size, step):
        data = h.pread(min(step, size - off), off)
        for i in range(len(data) // BS):
            b = off // BS + i
            v = decode(b, data[i * BS:(i + 1) * BS])
            stats["verified"] += 1
            if final or not pend[b]:
                want = cur[b] if final else durable[b]
                ok = want == UNKNOWN or v == want
                stats["exact"] += ok and want != UNKNOWN
                what = f"{'after the final flush' if final else 'flushed'} value {want}"
            else:
                cands = set(pend[b].values()) | {durable[b]}
                ok = UNKNOWN in cands or v in cands
                what = f"one of {sorted(cands)}"
            if not ok:
                fail(f"block {b}: want {what}, reads {'no value written' if v is None else v}")
            durable[b] = cur[b] = UNKNOWN if v is None else v
            pend[b].clear()


# Buffers are reused: libnbd 1.14's Python aio_pread and aio_pwrite never
# release the nbd.Buffer they are given (3000 commands of 64 KiB leak
# 192 MiB), so the driver keeps a pool of buffers per size, each an
# nbd.Buffer over a bytearray it fills in place.
pools = {}  # blocks -> [(bytearray, nbd.Buffer)]


def take(nblocks):
    p = pools.setdefault(nblocks, [])
    if p:
        return p.pop()
    ba = bytearray(nblocks * BS)
    return ba, nbd.Buffer.from_buffer(ba)


def pick(nblocks):
    for _ in range(16):
        b = rnd.randrange(0, N - nblocks + 1)
        r = range(b, b + nblocks)
        if not any(x in busy for x in r):
            return r
    return None


def run(h):
    """Keep QD commands in flight until stopfile appears or the server dies."""
    global seq, gen
    inflight = {}  # cookie -> (kind, blocks, value, buf, seq)
    flushing = None
    last = time.time()
    while not os.path.exists(stopfile):
        while len(inflight) < QD:
            x = rnd.random()
            if x < 0.03 and flushing is None:
                c = h.aio_flush()
                flushing = (c, list(done))
                done.clear()
                inflight[c] = ("flush", range(0), 0, None, 0)
                continue
            r = pick(rnd.choice((1, 1, 2, 4, 8, 16, 32)))
            if r is None:
                break
            off, n = r.start * BS, len(r) * BS
            seq += 1
            if x < 0.45:
                buf = take(len(r))
                c = h.aio_pread(buf[1], off)
                ent = ("read", r, 0, buf, seq)
            elif x < 0.85:
                gen += 1
                buf = take(len(r))
                buf[0][:] = b"".join(pattern(b, gen) for b in r)
                c = h.aio_pwrite(buf[1], off)
                ent = ("write", r, gen, buf, seq)
            elif x < 0.92 and can_trim:
                c = h.aio_trim(n, off)
                ent = ("trim", r, UNKNOWN, None, seq)
            elif can_zero:
                c = h.aio_zero(n, off)
                ent = ("zero", r, 0, None, seq)
            else:
                seq -= 1
                continue
            if ent[0] != "read":
                for b in r:
                    pend[b][seq] = ent[2]
            busy.update(r)
            inflight[c] = ent
        h.poll(-1)
        for c in [c for c in inflight if h.aio_command_completed(c)]:
            kind, r, v, buf, s = inflight.pop(c)
            busy.difference_update(r)
            if buf is not None:
                pools[len(r)].append(buf)
            stats[kind] += 1
            stats["bytes"] += len(r) * BS
            if kind == "flush":
                for s2, r2, v2 in flushing[1]:
                    for b in r2:
                        durable[b] = v2
                        pend[b].pop(s2, None)
                flushing = None
            elif kind == "read":
                data = buf[0]
                for i, b in enumerate(r):
                    got = decode(b, bytes(data[i * BS:(i + 1) * BS]))
                    if cur[b] != UNKNOWN and got != cur[b]:
                        fail(f"read of block {b}: want {cur[b]}, got {got}")
            else:
                for b in r:
                    cur[b] = v
                done.append((s, r, v))
        if time.time() - last > 30:
            last = time.time()
            log(" ".join(f"{k}={v}" for k, v in stats.items()))
    # Stopping: let the rest complete, then flush.
    while inflight:
        h.poll(-1)
        for c in [c for c in inflight if h.aio_command_completed(c)]:
            kind, r, v, buf, s = inflight.pop(c)
            busy.difference_update(r)
            if kind in ("write", "trim", "zero"):
                for b in r:
                    cur[b] = v
    h.flush()


h = connect()
can_trim, can_zero = h.can_trim(), h.can_zero()
log(f"connected, {N} blocks, trim {can_trim}, write-zeroes {can_zero}")
verify(h, False)  # learns the fresh image
while True:
    try:
        run(h)
        verify(h, True)
        break
    except nbd.Error as e:
        if not h.aio_is_dead() and not h.aio_is_closed():
            fail(f"a command failed on a live connection: {e}")
        # The server died: what was in flight may or may not have landed.
        busy.clear()
        done.clear()
        stats["restarts"] += 1
        log(f"server gone ({e}); reconnecting")
        try:
            h.close()
        except Exception:
            pass
        while True:
            h = connect()
            try:
                t = time.time()
                verify(h, False)
                log(f"verified the whole disk after restart {stats['restarts']} "
                    f"in {time.time() - t:.1f}s; mismatches so far {stats['mismatches']}")
                break
            except nbd.Error as e2:
                log(f"server gone again while verifying ({e2})")
log("FINAL " + " ".join(f"{k}={v}" for k, v in stats.items()))
sys.exit(1 if stats["mismatches"] else 0)
