// Load tools for `npm run bench`, built with Debian's golang-go into a temporary folder.
//
//	tools echo  -listen 127.0.0.1:0                      TCP echo server (one goroutine per connection)
//	tools rtt   -addr A -conns N -size 1024 -count C -duration D -warmup W
//	                                                     ping-pong client: N connections, each sends `size`
//	                                                     bytes and reads them back; prints one JSON line
//	tools http  -listen 127.0.0.1:0 -size 1024           HTTP/1.1 backend answering 200 with `size` bytes
//	tools proxy -listen 127.0.0.1:0 -target URL -idle-per-host N
//	                                                     httputil.ReverseProxy in front of URL
//
// Servers print "listening <port>" on stdout once bound and run until killed. Everything binds to
// loopback; the client is bounded by -count and -duration.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: tools echo|rtt|http|proxy [flags]")
		os.Exit(2)
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "echo":
		echo(args)
	case "rtt":
		rtt(args)
	case "http":
		backend(args)
	case "proxy":
		proxy(args)
	default:
		fmt.Fprintf(os.Stderr, "unknown tool %q\n", os.Args[1])
		os.Exit(2)
	}
}

func fatal(format string, a ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	os.Exit(1)
}

func loopbackListener(addr string) net.Listener {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || !net.ParseIP(host).IsLoopback() {
		fatal("refusing to listen on %q: loopback only", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fatal("listen %s: %v", addr, err)
	}
	fmt.Printf("listening %d\n", ln.Addr().(*net.TCPAddr).Port)
	return ln
}

func echo(args []string) {
	fs := flag.NewFlagSet("echo", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address")
	_ = fs.Parse(args)
	ln := loopbackListener(*listen)
	for {
		conn, err := ln.Accept()
		if err != nil {
			continue
		}
		go func(c net.Conn) {
			defer c.Close()
			buf := make([]byte, 64*1024)
			_, _ = io.CopyBuffer(c, c, buf)
		}(conn)
	}
}

type rttResult struct {
	Conns      int     `json:"conns"`
	Samples    int     `json:"samples"`
	Total      int64   `json:"total"`
	Errors     int64   `json:"errors"`
	Seconds    float64 `json:"seconds"`
	PerSecond  float64 `json:"perSecond"`
	P50Micros  float64 `json:"p50us"`
	P90Micros  float64 `json:"p90us"`
	P99Micros  float64 `json:"p99us"`
	P999Micros float64 `json:"p999us"`
	MaxMicros  float64 `json:"maxus"`
	FirstError string  `json:"firstError,omitempty"`
}

func rtt(args []string) {
	fs := flag.NewFlagSet("rtt", flag.ExitOnError)
	addr := fs.String("addr", "", "host:port")
	conns := fs.Int("conns", 1, "connections, each one request in flight")
	size := fs.Int("size", 1024, "bytes per round trip")
	count := fs.Int64("count", 100000, "stop after this many measured round trips")
	duration := fs.Duration("duration", 5*time.Second, "stop after this long (measured part)")
	warmup := fs.Duration("warmup", 500*time.Millisecond, "round trips in this first period are not measured")
	_ = fs.Parse(args)
	host, _, err := net.SplitHostPort(*addr)
	if err != nil || !net.ParseIP(host).IsLoopback() {
		fatal("refusing to connect to %q: loopback only", *addr)
	}

	sockets := make([]net.Conn, *conns)
	for i := range sockets {
		c, err := net.DialTimeout("tcp", *addr, 5*time.Second)
		if err != nil {
			fatal("dial %s: %v", *addr, err)
		}
		sockets[i] = c
	}
	defer func() {
		for _, c := range sockets {
			c.Close()
		}
	}()

	payload := bytes.Repeat([]byte{'x'}, *size)
	start := time.Now()
	measureFrom := start.Add(*warmup)
	stopAt := measureFrom.Add(*duration)
	var measured, total, errors int64
	var firstError atomic.Value
	samples := make([][]time.Duration, *conns)
	var wg sync.WaitGroup
	for i, c := range sockets {
		wg.Add(1)
		go func(i int, c net.Conn) {
			defer wg.Done()
			buf := make([]byte, *size)
			local := make([]time.Duration, 0, 4096)
			for {
				t0 := time.Now()
				if t0.After(stopAt) {
					break
				}
				_ = c.SetDeadline(t0.Add(10 * time.Second))
				if _, err := c.Write(payload); err != nil {
					atomic.AddInt64(&errors, 1)
					firstError.CompareAndSwap(nil, err.Error())
					break
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					atomic.AddInt64(&errors, 1)
					firstError.CompareAndSwap(nil, err.Error())
					break
				}
				t1 := time.Now()
				atomic.AddInt64(&total, 1)
				if t0.After(measureFrom) {
					local = append(local, t1.Sub(t0))
					if atomic.AddInt64(&measured, 1) >= *count {
						break
					}
				}
			}
			samples[i] = local
		}(i, c)
	}
	wg.Wait()
	end := time.Now()

	var all []time.Duration
	for _, s := range samples {
		all = append(all, s...)
	}
	sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
	q := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		i := int(p * float64(len(all)-1))
		return float64(all[i].Nanoseconds()) / 1000
	}
	measuredFor := end.Sub(measureFrom).Seconds()
	result := rttResult{
		Conns:      *conns,
		Samples:    len(all),
		Total:      atomic.LoadInt64(&total),
		Errors:     errors,
		Seconds:    measuredFor,
		PerSecond:  float64(len(all)) / measuredFor,
		P50Micros:  q(0.50),
		P90Micros:  q(0.90),
		P99Micros:  q(0.99),
		P999Micros: q(0.999),
		MaxMicros:  q(1),
	}
	if e, ok := firstError.Load().(string); ok {
		result.FirstError = e
	}
	out, _ := json.Marshal(result)
	fmt.Println(string(out))
}

func backend(args []string) {
	fs := flag.NewFlagSet("http", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address")
	size := fs.Int("size", 1024, "response body bytes")
	_ = fs.Parse(args)
	body := bytes.Repeat([]byte{'x'}, *size)
	length := strconv.Itoa(len(body))
	ln := loopbackListener(*listen)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		h := w.Header()
		h["Content-Type"] = []string{"text/plain"}
		h["Content-Length"] = []string{length}
		w.WriteHeader(200)
		_, _ = w.Write(body)
	})
	server := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	fatal("serve: %v", server.Serve(ln))
}

func proxy(args []string) {
	fs := flag.NewFlagSet("proxy", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address")
	target := fs.String("target", "", "backend URL")
	// MaxIdleConns 100 and IdleConnTimeout 90s as in the Go prototype's relay transport; it leaves
	// MaxIdleConnsPerHost at Go's default (2), which -idle-per-host can raise.
	idlePerHost := fs.Int("idle-per-host", 0, "Transport.MaxIdleConnsPerHost (0: Go's default of 2)")
	_ = fs.Parse(args)
	u, err := url.Parse(*target)
	if err != nil || u.Host == "" {
		fatal("bad -target %q", *target)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConns = 100
	transport.IdleConnTimeout = 90 * time.Second
	transport.MaxIdleConnsPerHost = *idlePerHost
	if *idlePerHost > transport.MaxIdleConns {
		transport.MaxIdleConns = *idlePerHost
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = transport
	ln := loopbackListener(*listen)
	server := &http.Server{Handler: rp, ReadHeaderTimeout: 5 * time.Second}
	fatal("serve: %v", server.Serve(ln))
}
