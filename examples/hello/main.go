// Command hello is a small static program for trying kiln: it greets,
// prints its arguments and the guest it runs in, and exits with the status
// given by -exit. With -sleep it waits first, and reports a SIGTERM it gets
// before exiting with -exit (and with -marker records it in a file); -signal
// makes it kill itself with a signal; -cat and -write read and write a file.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"
)

func main() {
	exit := flag.Int("exit", 0, "exit status")
	sleep := flag.Duration("sleep", 0, "wait this long before exiting")
	sig := flag.Int("signal", 0, "end by sending this signal to itself")
	env := flag.String("env", "", "print the value of this environment variable")
	lines := flag.Int("lines", 0, "print this many numbered lines")
	ifaces := flag.Bool("ifaces", false, "print the guest's network interfaces and their addresses")
	var gets urlList
	flag.Var(&gets, "get", "resolve the host of this http:// URL and GET it, printing the outcome (repeatable)")
	cat := flag.String("cat", "", "print the content of this file (or why it cannot be read)")
	write := flag.String("write", "", "try to create this file and say whether it worked")
	marker := flag.String("marker", "", "with -sleep: on SIGTERM, write a marker to this file (synced) before exiting")
	trapHUP := flag.Bool("trap-hup", false, "while sleeping, print each SIGHUP and keep sleeping")
	allocMB := flag.Int("alloc-mb", 0, "allocate and touch this many MiB, one at a time, printing progress")
	zero := flag.Int64("zero", -1, "write this many zero bytes to stdout and exit, printing nothing else")
	fill := flag.String("fill", "", "write 1 MiB chunks (each synced) to this file until a write fails, then say how far it got and why")
	spoof := flag.String("spoof", "", "for 3 s, send raw frames on eth0 claiming these IPv4 addresses (comma-separated): ARP replies, and UDP from them and from a forged MAC; then say how many were sent")
	console := flag.Int64("console", 0, "write this many bytes of numbered lines to the serial console (/dev/ttyS0), then say so on stdout")
	flag.Parse()
	if *zero >= 0 {
		writeZeros(*zero)
		return
	}
	host, _ := os.Hostname()
	uptime, _ := os.ReadFile("/proc/uptime")
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	wd, _ := os.Getwd()
	fmt.Printf("hello from %s (kernel %s, uptime %ss)\n", host, strings.TrimSpace(string(kernel)), strings.Fields(string(uptime) + " ?")[0])
	fmt.Printf("args: %q\n", flag.Args())
	fmt.Printf("uid=%d gid=%d cwd=%s cpus=%d\n", os.Getuid(), os.Getgid(), wd, runtime.NumCPU())
	if *env != "" {
		fmt.Printf("%s=%s\n", *env, os.Getenv(*env))
	}
	if *ifaces {
		printInterfaces()
	}
	for _, u := range gets {
		get(u)
	}
	fmt.Fprintf(os.Stderr, "this line went to stderr\n")
	if *cat != "" {
		if b, err := os.ReadFile(*cat); err != nil {
			fmt.Printf("cat: %v\n", err)
		} else {
			fmt.Printf("cat %s: %s\n", *cat, strings.TrimSpace(string(b)))
		}
	}
	if *write != "" {
		if err := os.WriteFile(*write, []byte("written by hello\n"), 0o644); err != nil {
			fmt.Printf("write: %v\n", err)
		} else {
			fmt.Printf("write %s: ok\n", *write)
		}
	}
	if *console > 0 {
		floodConsole(*console)
	}
	if *fill != "" {
		fillFile(*fill)
	}
	if *spoof != "" {
		spoofFrames(strings.Split(*spoof, ","))
	}
	for i := 1; i <= *lines; i++ {
		fmt.Printf("line %d of %d\n", i, *lines)
	}
	if *allocMB > 0 {
		allocate(*allocMB)
	}
	if *sleep > 0 {
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		hup := make(chan os.Signal, 1)
		if *trapHUP {
			signal.Notify(hup, syscall.SIGHUP)
		}
		fmt.Println("sleeping")
		end := time.After(*sleep)
	wait:
		for {
			select {
			case s := <-term:
				fmt.Printf("got %v, exiting\n", s)
				if *marker != "" {
					writeMarker(*marker, s)
				}
				break wait
			case s := <-hup:
				fmt.Printf("got %v, still running\n", s)
			case <-end:
				break wait
			}
		}
	}
	if *sig > 0 {
		signal.Reset()
		syscall.Kill(os.Getpid(), syscall.Signal(*sig))
		time.Sleep(time.Second)
	}
	os.Exit(*exit)
}

// printInterfaces prints one line per network interface: "iface NAME
// up|down ADDR...".
func printInterfaces() {
	ifs, err := net.Interfaces()
	if err != nil {
		fmt.Printf("interfaces: %v\n", err)
		return
	}
	for _, ifi := range ifs {
		state := "down"
		if ifi.Flags&net.FlagUp != 0 {
			state = "up"
		}
		var addrs []string
		as, _ := ifi.Addrs()
		for _, a := range as {
			addrs = append(addrs, a.String())
		}
		fmt.Printf("iface %s %s %s\n", ifi.Name, state, strings.Join(addrs, " "))
	}
}

// writeMarker records in file p that the program got sig and had time to
// act on it, synced so that it is on disk before the program exits.
func writeMarker(p string, sig os.Signal) {
	f, err := os.Create(p)
	if err == nil {
		_, err = fmt.Fprintf(f, "stopped gracefully by %v\n", sig)
		if serr := f.Sync(); err == nil {
			err = serr
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fmt.Printf("marker: %v\n", err)
		return
	}
	fmt.Printf("marker written to %s\n", p)
}

// hold keeps allocate's memory reachable.
var hold [][]byte

// allocate allocates n MiB one MiB at a time, touching every page, so the
// kernel must find real memory for it.
func allocate(n int) {
	for i := 1; i <= n; i++ {
		b := make([]byte, 1<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1
		}
		hold = append(hold, b)
		if i%16 == 0 || i == n {
			fmt.Printf("allocated %d MiB\n", i)
		}
	}
}

// writeZeros writes n zero bytes to stdout.
func writeZeros(n int64) {
	buf := make([]byte, 64<<10)
	for n > 0 {
		k := int64(len(buf))
		if n < k {
			k = n
		}
		if _, err := os.Stdout.Write(buf[:k]); err != nil {
			os.Exit(1)
		}
		n -= k
	}
}

// floodConsole writes n bytes of numbered lines to the serial console, the
// way a guest that floods its host's console log would, and ends with a
// line naming the total.
func floodConsole(n int64) {
	f, err := os.OpenFile("/dev/ttyS0", os.O_WRONLY, 0)
	if err != nil {
		fmt.Printf("console: %v\n", err)
		return
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 64<<10)
	var done int64
	for i := 0; done < n; i++ {
		k, _ := fmt.Fprintf(w, "console flood line %09d .........................................................\n", i)
		done += int64(k)
	}
	fmt.Fprintf(w, "console flood done: %d bytes\n", done)
	if err := w.Flush(); err != nil {
		fmt.Printf("console: %v\n", err)
		return
	}
	fmt.Printf("console flood done: %d bytes\n", done)
}

// fillFile writes to path until its disk is full or fails, syncing each
// chunk so that the error comes from the disk and not later.
func fillFile(path string) {
	f, err := os.Create(path)
	if err != nil {
		fmt.Printf("fill: %v\n", err)
		return
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i)
	}
	for mib := 0; ; mib++ {
		_, err := f.Write(chunk)
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			fmt.Printf("fill: stopped after %d MiB: %v\n", mib, err)
			return
		}
	}
}

// spoofFrames plays a guest that tries to take other addresses on its
// network: for 3 s it broadcasts ARP replies claiming each address with
// its own MAC, sends UDP from each address, and UDP from its own address
// under a forged MAC, all as raw frames on eth0.
func spoofFrames(addrs []string) {
	ifi, err := net.InterfaceByName("eth0")
	if err != nil {
		fmt.Printf("spoof: %v\n", err)
		return
	}
	fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW, int(htons(syscall.ETH_P_ALL)))
	if err != nil {
		fmt.Printf("spoof: %v\n", err)
		return
	}
	defer syscall.Close(fd)
	to := &syscall.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}
	copy(to.Addr[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	own := ifi.HardwareAddr
	forged := net.HardwareAddr{0x52, 0x54, 0x00, 0xde, 0xad, 0x01}
	var ownIP net.IP
	if as, err := ifi.Addrs(); err == nil && len(as) > 0 {
		ownIP = as[0].(*net.IPNet).IP.To4()
	}
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	var frames [][]byte
	for _, a := range addrs {
		ip := net.ParseIP(a).To4()
		if ip == nil {
			fmt.Printf("spoof: bad address %q\n", a)
			return
		}
		frames = append(frames, arpReply(own, ip, bcast), udpFrame(own, bcast, ip, net.IPv4(10, 255, 255, 255).To4()))
	}
	if ownIP != nil {
		frames = append(frames, udpFrame(forged, bcast, ownIP, net.IPv4(10, 255, 255, 255).To4()))
	}
	sent := 0
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		for _, f := range frames {
			if syscall.Sendto(fd, f, 0, to) == nil {
				sent++
			}
		}
	}
	fmt.Printf("spoof: sent %d frames\n", sent)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// arpReply is an Ethernet frame holding an ARP reply that says ip is at
// mac, sent to dst.
func arpReply(mac net.HardwareAddr, ip net.IP, dst net.HardwareAddr) []byte {
	f := append(append(append([]byte{}, dst...), mac...), 0x08, 0x06)
	f = append(f, 0, 1, 8, 0, 6, 4, 0, 2) // Ethernet, IPv4, reply
	f = append(append(f, mac...), ip...)
	f = append(append(f, dst...), ip...)
	return f
}

// udpFrame is an Ethernet frame from mac holding a small UDP datagram from
// src:9 to dst:9.
func udpFrame(mac, to net.HardwareAddr, src, dst net.IP) []byte {
	payload := []byte("spoofed")
	udp := []byte{0, 9, 0, 9, 0, byte(8 + len(payload)), 0, 0}
	ip := []byte{0x45, 0, 0, byte(20 + len(udp) + len(payload)), 0, 0, 0x40, 0, 64, 17, 0, 0}
	ip = append(append(ip, src...), dst...)
	var sum uint32
	for i := 0; i < len(ip); i += 2 {
		sum += uint32(ip[i])<<8 | uint32(ip[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	ip[10], ip[11] = byte(^sum>>8), byte(^sum)
	f := append(append(append([]byte{}, to...), mac...), 0x08, 0x00)
	return append(append(append(f, ip...), udp...), payload...)
}
