// Command responder answers ICMP echo requests after a fixed delay.
//
// It is the benchmark's and the lab's "known true delay": run it in a network
// namespace whose kernel echo replies are off (net.ipv4.icmp_echo_ignore_all=1,
// and net.ipv6.icmp.echo_ignore_all=1 with -ipv6) and every echo request is
// answered by this program, from the address it was sent to, DELAY after the
// kernel received it. On SIGTERM it prints, as one
// JSON line on stderr, how many replies it sent and the hold times it achieved.
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"syscall"
	"time"
	"unsafe"
)

type pending struct {
	send  func() error // sends the reply
	due   time.Time
	stamp time.Time
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// reply turns an IPv4 echo request into its echo reply (addresses swapped).
func reply(req []byte) ([]byte, [4]byte, bool) {
	var to [4]byte
	if len(req) < 20 {
		return nil, to, false
	}
	ihl := int(req[0]&0x0f) * 4
	if len(req) < ihl+8 || req[ihl] != 8 {
		return nil, to, false
	}
	out := make([]byte, 20+len(req)-ihl)
	out[0] = 0x45
	out[8] = 64 // TTL
	out[9] = 1  // ICMP
	copy(out[12:16], req[16:20])
	copy(out[16:20], req[12:16])
	copy(to[:], req[12:16])
	icmp := out[20:]
	copy(icmp, req[ihl:])
	icmp[0] = 0
	icmp[2], icmp[3] = 0, 0
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp))
	return out, to, true
}

func kernelStamp(oob []byte) (time.Time, bool) {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return time.Time{}, false
	}
	for _, m := range msgs {
		if m.Header.Level == syscall.SOL_SOCKET && m.Header.Type == syscall.SO_TIMESTAMPNS && len(m.Data) >= 16 {
			ts := (*syscall.Timespec)(unsafe.Pointer(&m.Data[0]))
			return time.Unix(ts.Sec, ts.Nsec), true
		}
	}
	return time.Time{}, false
}

func main() {
	delay := flag.Duration("delay", time.Millisecond, "hold each reply this long")
	ipv6 := flag.Bool("ipv6", false, "answer ICMPv6 echo requests too")
	flag.Parse()

	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_ICMP)
	if err != nil {
		fmt.Fprintln(os.Stderr, "responder: raw socket:", err)
		os.Exit(1)
	}
	must(syscall.SetsockoptInt(fd, syscall.IPPROTO_IP, syscall.IP_HDRINCL, 1))
	must(syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1))
	must(syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, 8<<20))
	// Only echo requests reach us: ICMP_FILTER drops every other type.
	filter := uint32(0xffffffff &^ (1 << 8))
	fbytes := (*[4]byte)(unsafe.Pointer(&filter))[:]
	must(syscall.SetsockoptString(fd, 255, 1, string(fbytes)))

	queue := make(chan pending, 1<<16)
	holds := make(chan time.Duration, 1<<16)
	go func() {
		for p := range queue {
			if wait := time.Until(p.due); wait > 0 {
				time.Sleep(wait)
			}
			now := time.Now()
			if err := p.send(); err == nil {
				select {
				case holds <- now.Sub(p.stamp):
				default:
				}
			}
		}
	}()

	// Hold times are kept between SIGUSR1 (start) and SIGUSR2 (stop), so that
	// the figures cover exactly the benchmark's measuring window.
	var samples []time.Duration
	done := make(chan struct{})
	control := make(chan os.Signal, 2)
	signal.Notify(control, syscall.SIGUSR1, syscall.SIGUSR2)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		recording := false
		for {
			select {
			case h := <-holds:
				if recording {
					samples = append(samples, h)
				}
			case sig := <-control:
				recording = sig == syscall.SIGUSR1
			case <-done:
				return
			}
		}
	}()
	go func() {
		buf := make([]byte, 65536)
		oob := make([]byte, 128)
		for {
			n, oobn, _, _, err := syscall.Recvmsg(fd, buf, oob, 0)
			if err != nil {
				continue
			}
			out, to, ok := reply(buf[:n])
			if !ok {
				continue
			}
			stamp, ok := kernelStamp(oob[:oobn])
			if !ok {
				stamp = time.Now()
			}
			send := func() error { return syscall.Sendto(fd, out, 0, &syscall.SockaddrInet4{Addr: to}) }
			queue <- pending{send: send, due: stamp.Add(*delay), stamp: stamp}
		}
	}()
	if *ipv6 {
		go serve6(*delay, queue)
	}
	<-stop
	done <- struct{}{}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	summary := map[string]any{"replies": len(samples), "delay_ms": ms(*delay)}
	if len(samples) > 0 {
		summary["hold_median_ms"] = ms(samples[len(samples)/2])
		summary["hold_p99_ms"] = ms(samples[len(samples)*99/100])
	}
	line, _ := json.Marshal(summary)
	fmt.Fprintln(os.Stderr, string(line))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "responder:", err)
		os.Exit(1)
	}
}

// IPv6 socket options (linux/in6.h, linux/icmpv6.h).
const (
	icmp6Filter     = 1
	ipv6RecvPktinfo = 49
	ipv6Pktinfo     = 50
)

// serve6 answers ICMPv6 echo requests. The kernel hands a raw ICMPv6 socket the
// ICMP message without the IPv6 header and fills in the reply's checksum; the
// address the request was sent to comes from IPV6_PKTINFO and goes back out
// as the reply's source.
func serve6(delay time.Duration, queue chan<- pending) {
	fd, err := syscall.Socket(syscall.AF_INET6, syscall.SOCK_RAW, syscall.IPPROTO_ICMPV6)
	must(err)
	must(syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1))
	must(syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, 8<<20))
	must(syscall.SetsockoptInt(fd, syscall.IPPROTO_IPV6, ipv6RecvPktinfo, 1))
	var filter [8]uint32 // a set bit blocks that type: let only echo requests (128) in
	for i := range filter {
		filter[i] = 0xffffffff
	}
	filter[128>>5] &^= 1 << (128 & 31)
	fbytes := (*[32]byte)(unsafe.Pointer(&filter))[:]
	must(syscall.SetsockoptString(fd, syscall.IPPROTO_ICMPV6, icmp6Filter, string(fbytes)))
	buf := make([]byte, 65536)
	oob := make([]byte, 256)
	for {
		n, oobn, _, from, err := syscall.Recvmsg(fd, buf, oob, 0)
		peer, isV6 := from.(*syscall.SockaddrInet6)
		if err != nil || !isV6 || n < 8 || buf[0] != 128 {
			continue
		}
		out := append([]byte(nil), buf[:n]...)
		out[0], out[2], out[3] = 129, 0, 0 // echo reply; the kernel writes the checksum
		stamp, dest := time.Now(), []byte(nil)
		if msgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				switch {
				case m.Header.Level == syscall.SOL_SOCKET && m.Header.Type == syscall.SO_TIMESTAMPNS && len(m.Data) >= 16:
					ts := (*syscall.Timespec)(unsafe.Pointer(&m.Data[0]))
					stamp = time.Unix(ts.Sec, ts.Nsec)
				case m.Header.Level == syscall.IPPROTO_IPV6 && m.Header.Type == ipv6Pktinfo && len(m.Data) >= 20:
					dest = append([]byte(nil), m.Data[:20]...) // in6_pktinfo: address, ifindex
				}
			}
		}
		to := *peer
		send := func() error {
			var cmsg []byte
			if dest != nil {
				cmsg = make([]byte, syscall.CmsgSpace(len(dest)))
				h := (*syscall.Cmsghdr)(unsafe.Pointer(&cmsg[0]))
				h.Level, h.Type = syscall.IPPROTO_IPV6, ipv6Pktinfo
				h.SetLen(syscall.CmsgLen(len(dest)))
				copy(cmsg[syscall.CmsgLen(0):], dest)
			}
			return syscall.Sendmsg(fd, out, cmsg, &to, 0)
		}
		queue <- pending{send: send, due: stamp.Add(delay), stamp: stamp}
	}
}
