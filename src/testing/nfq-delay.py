#!/usr/bin/env python3
# A packet delayer for tests, for kernels without tc netem (CONFIG_NET_SCH_NETEM unset, as on
# the Firecracker VMs CI runs on). nftables sends packets to NFQUEUE queue N ("queue num N
# bypass"); the kernel keeps each packet and this process gives the accept verdict DELAY_MS
# after it arrived. Only metadata is copied to user space, never the payload; verdicts go out
# in arrival order as batch verdicts ("accept everything up to id"), so order is kept and a
# burst costs one message. Plain netlink (AF_NETLINK, NETLINK_NETFILTER), no libraries.
#
# usage: nfq-delay.py QUEUE DELAY_MS     (prints "ready" once bound; SIGTERM/SIGKILL to stop:
# the kernel drops what is still queued, as a cable pulled mid-flight would)

import collections
import os
import select
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
NF_ACCEPT = 1
QUEUE_MAXLEN = 65536


def attr(kind, payload):
    n = 4 + len(payload)
    return struct.pack('=HH', n, kind) + payload + b'\0' * ((4 - n % 4) % 4)


def message(msg, queue, attrs, flags=NLM_F_REQUEST):
    body = struct.pack('=BBH', socket.AF_UNSPEC, 0, socket.htons(queue)) + b''.join(attrs)
    return struct.pack('=IHHII', 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, 0, 0) + body


def config(sock, queue, attrs):
    sock.send(message(NFQNL_MSG_CONFIG, queue, attrs, NLM_F_REQUEST | NLM_F_ACK))
    data = sock.recv(65536)
    length, kind = struct.unpack_from('=IH', data, 0)
    if kind == NLMSG_ERROR:
        (err,) = struct.unpack_from('=i', data, 16)
        if err != 0:
            raise OSError(-err, 'nfqueue config refused: ' + os.strerror(-err))


def main():
    queue = int(sys.argv[1])
    delay_s = float(sys.argv[2]) / 1000.0
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((0, 0))
    config(sock, queue, [attr(NFQA_CFG_CMD, struct.pack('=BBH', NFQNL_CFG_CMD_BIND, 0, 0))])
    config(sock, queue, [attr(NFQA_CFG_PARAMS, struct.pack('>IB', 0, NFQNL_COPY_META))])
    config(sock, queue, [attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack('>I', QUEUE_MAXLEN))])
    print('ready', flush=True)
    due = collections.deque()  # (release time, packet id), in arrival order
    while True:
        timeout = max(0.0, due[0][0] - time.monotonic()) if due else None
        readable, _, _ = select.select([sock], [], [], timeout)
        if readable:
            data = sock.recv(1 << 20)
            arrived = time.monotonic()
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from('=IH', data, offset)
                if length < 16:
                    break
                if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                    a = offset + 20
                    while a + 4 <= offset + length:
                        alen, akind = struct.unpack_from('=HH', data, a)
                        if alen < 4:
                            break
                        if akind & 0x7fff == NFQA_PACKET_HDR:
                            (packet_id,) = struct.unpack_from('>I', data, a + 4)
                            due.append((arrived + delay_s, packet_id))
                        a += (alen + 3) & ~3
                offset += (length + 3) & ~3
        now = time.monotonic()
        last = None
        while due and due[0][0] <= now:
            last = due.popleft()[1]
        if last is not None:
            sock.send(message(NFQNL_MSG_VERDICT_BATCH, queue, [attr(NFQA_VERDICT_HDR, struct.pack('>II', NF_ACCEPT, last))]))


if __name__ == '__main__':
    main()
