#!/usr/bin/env python3
"""Sends a hand-made TCP SYN as a raw Ethernet frame and says whether it was answered.

Usage: raw_syn.py IFNAME SRC_IP DST_MAC DST_IP DST_PORT

What a container with NET_RAW (Docker's default set) can do without any tool: the frame
goes to DST_MAC (the bridge) with any IP destination, here 127.0.0.1, which no normal
socket would route out of the container. Prints `answered` (a SYN-ACK came back),
`reset` (an RST came back) or `silent` (nothing within 3 s). Used by tests/security.rs.
"""

import random
import socket
import struct
import sys
import time


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def main():
    ifname, src_ip, dst_mac, dst_ip, dst_port = sys.argv[1:6]
    dst_port = int(dst_port)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    sock.bind((ifname, 0))
    src_mac = sock.getsockname()[4]
    src, dst = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
    sport = random.randint(20000, 60000)

    tcp = struct.pack("!HHIIBBHHH", sport, dst_port, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64,
                     socket.IPPROTO_TCP, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    frame = bytes.fromhex(dst_mac.replace(":", "")) + src_mac + b"\x08\x00" + ip + tcp

    sock.settimeout(0.2)
    deadline = time.monotonic() + 3
    sent = 0
    while time.monotonic() < deadline:
        if sent < 3:
            sock.send(frame)
            sent += 1
        try:
            packet = sock.recv(4096)
        except socket.timeout:
            continue
        header = packet[14:]
        if len(header) < 40 or header[9] != socket.IPPROTO_TCP or header[12:16] != dst:
            continue
        segment = header[(header[0] & 0x0F) * 4:]
        got_sport, got_dport = struct.unpack("!HH", segment[:4])
        if (got_sport, got_dport) != (dst_port, sport):
            continue
        flags = segment[13]
        print("answered" if flags & 0x12 == 0x12 else "reset")
        return
    print("silent")


if __name__ == "__main__":
    main()
