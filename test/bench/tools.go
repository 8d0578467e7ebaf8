// Load tools for `npm run bench`, built with Debian's golang-go into a temporary folder.
//
//	tools echo  -listen 127.0.0.1:0                      TCP echo server (one goroutine per connection)
//	tools rtt   -addr A -conns N -size 1024 -count C -duration D -warmup W
//	                                                     ping-pong client: N connections, each sends `size`
//	                                                     bytes and reads them back; prints one JSON line
//	tools http  -listen 127.0.0.1:0 -size 1024           HTTP/1.1 backend answering 200 with `size` bytes
//	tools proxy -listen 127.0.0.1:0 -target URL -idle-per-host N
//	                                                     httputil.ReverseProxy in front of URL
//	tools https -listen 127.0.0.1:0 -size 1024 -cert F -key F
//	                                                     the HTTP backend over TLS (HTTP/1.1)
//	tools serviceproxy -listen 127.0.0.1:0 -cert F -key F -upstream URL -upstream-ca F -token-file F
//	                   -review-url URL -review-ca F -review-cert F -review-key F -cache-ttl D
//	                                                     the service proxy's work in Go: TLS server,
//	                                                     kube-apiserver requests reviewed (cached) and
//	                                                     impersonated, Service requests sent to the relay
//	                                                     through services/proxy; httputil.ReverseProxy
//
// Servers print "listening <port>" on stdout once bound and run until killed. Everything binds to
// loopback; the client is bounded by -count and -duration.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
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
	"strings"
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
	case "https":
		backendTLS(args)
	case "serviceproxy":
		serviceProxy(args)
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
	ln := loopbackListener(*listen)
	server := &http.Server{Handler: backendHandler(*size), ReadHeaderTimeout: 5 * time.Second}
	fatal("serve: %v", server.Serve(ln))
}

func backendTLS(args []string) {
	fs := flag.NewFlagSet("https", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address")
	size := fs.Int("size", 1024, "response body bytes")
	cert := fs.String("cert", "", "serving certificate (PEM)")
	key := fs.String("key", "", "serving key (PEM)")
	_ = fs.Parse(args)
	ln := loopbackListener(*listen)
	// HTTP/1.1 only: the proxies in front of it speak HTTP/1.1 upstream. Idle keep-alive
	// connections stay open for 90 s, as long as the proxies keep theirs: the kube-apiserver it
	// stands for (v1.20.2 sets no idle or read timeout) does not close them. Without IdleTimeout
	// Go 1.19 applies ReadHeaderTimeout to the wait for the next request, so every connection
	// idle for 5 s was closed, and each measured run began with both proxies dialling anew.
	server := &http.Server{
		Handler:           backendHandler(*size),
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       90 * time.Second,
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	fatal("serve: %v", server.ServeTLS(ln, *cert, *key))
}

func backendHandler(size int) http.Handler {
	body := bytes.Repeat([]byte{'x'}, size)
	length := strconv.Itoa(len(body))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		h := w.Header()
		h["Content-Type"] = []string{"text/plain"}
		h["Content-Length"] = []string{length}
		w.WriteHeader(200)
		_, _ = w.Write(body)
	})
	return handler
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

func readFile(path string) []byte {
	data, err := os.ReadFile(path)
	if err != nil {
		fatal("read %s: %v", path, err)
	}
	return data
}

func pool(path string) *x509.CertPool {
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(readFile(path)) {
		fatal("no certificate in %s", path)
	}
	return roots
}

// reviewed is a TokenReview answer kept for the cache TTL.
type reviewed struct {
	user    string
	groups  []string
	ok      bool
	expires time.Time
}

type callerKey struct{}

type caller struct {
	user   string
	groups []string
}

func serviceProxy(args []string) {
	fs := flag.NewFlagSet("serviceproxy", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address")
	cert := fs.String("cert", "", "serving certificate (PEM)")
	key := fs.String("key", "", "serving key (PEM)")
	upstream := fs.String("upstream", "", "the managed apiserver URL (https)")
	upstreamCA := fs.String("upstream-ca", "", "CA of the managed apiserver (PEM)")
	tokenFile := fs.String("token-file", "", "the proxy's own token for the managed apiserver")
	reviewURL := fs.String("review-url", "", "apiserver that answers TokenReviews")
	reviewCA := fs.String("review-ca", "", "its CA (PEM)")
	reviewCert := fs.String("review-cert", "", "client certificate for it (PEM)")
	reviewKey := fs.String("review-key", "", "client key for it (PEM)")
	cacheTTL := fs.Duration("cache-ttl", 10*time.Second, "how long a TokenReview answer is reused")
	idlePerHost := fs.Int("idle-per-host", 1024, "Transport.MaxIdleConnsPerHost")
	relayNamespace := fs.String("relay-namespace", "open-cluster-management-agent-addon", "the relay Service's namespace")
	relayName := fs.String("relay-name", "cluster-proxy-service-relay", "the relay Service's name")
	relayPort := fs.Int("relay-port", 7444, "the relay Service's port")
	_ = fs.Parse(args)
	target, err := url.Parse(*upstream)
	if err != nil || target.Host == "" {
		fatal("bad -upstream %q", *upstream)
	}
	proxyToken := "Bearer " + strings.TrimSpace(string(readFile(*tokenFile)))

	clientCert, err := tls.LoadX509KeyPair(*reviewCert, *reviewKey)
	if err != nil {
		fatal("review client certificate: %v", err)
	}
	reviewer := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: pool(*reviewCA), Certificates: []tls.Certificate{clientCert}},
			MaxIdleConnsPerHost: 16,
		},
	}
	var mu sync.Mutex
	cache := map[string]reviewed{}
	review := func(token string) (reviewed, error) {
		sum := sha256.Sum256([]byte(token))
		k := hex.EncodeToString(sum[:])
		now := time.Now()
		mu.Lock()
		hit, found := cache[k]
		mu.Unlock()
		if found && now.Before(hit.expires) {
			return hit, nil
		}
		body, _ := json.Marshal(map[string]any{
			"apiVersion": "authentication.k8s.io/v1",
			"kind":       "TokenReview",
			"spec":       map[string]string{"token": token},
		})
		resp, err := reviewer.Post(*reviewURL+"/apis/authentication.k8s.io/v1/tokenreviews", "application/json", bytes.NewReader(body))
		if err != nil {
			return reviewed{}, err
		}
		defer resp.Body.Close()
		var answer struct {
			Status struct {
				Authenticated bool   `json:"authenticated"`
				Error         string `json:"error"`
				User          struct {
					Username string   `json:"username"`
					Groups   []string `json:"groups"`
				} `json:"user"`
			} `json:"status"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
			return reviewed{}, err
		}
		entry := reviewed{
			user:    answer.Status.User.Username,
			groups:  answer.Status.User.Groups,
			ok:      answer.Status.Authenticated && answer.Status.Error == "" && answer.Status.User.Username != "",
			expires: now.Add(*cacheTTL),
		}
		mu.Lock()
		cache[k] = entry
		mu.Unlock()
		return entry, nil
	}

	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = &tls.Config{RootCAs: pool(*upstreamCA)}
	transport.ForceAttemptHTTP2 = false
	transport.MaxIdleConns = *idlePerHost
	transport.MaxIdleConnsPerHost = *idlePerHost
	transport.IdleConnTimeout = 90 * time.Second
	relayBase := fmt.Sprintf("/api/v1/namespaces/%s/services/http:%s:%d/proxy", *relayNamespace, *relayName, *relayPort)
	strip := func(h http.Header) {
		for name := range h {
			lower := strings.ToLower(name)
			if strings.HasPrefix(lower, "impersonate-") || strings.HasPrefix(lower, "cluster-proxy-") {
				delete(h, name)
			}
		}
	}
	rp := &httputil.ReverseProxy{
		Transport: transport,
		// Director (this Go has no Rewrite): the outgoing request starts as a copy of the incoming one.
		Director: func(out *http.Request) {
			original := out.Header.Get("Authorization")
			routing := make([]string, 0, 4)
			for _, name := range []string{"Cluster-Proxy-Proto", "Cluster-Proxy-Namespace", "Cluster-Proxy-Service", "Cluster-Proxy-Port"} {
				routing = append(routing, out.Header.Get(name))
			}
			h := out.Header
			strip(h)
			h.Del("Authorization")
			out.URL.Scheme = target.Scheme
			out.URL.Host = target.Host
			out.Host = target.Host
			if _, ok := h["User-Agent"]; !ok {
				h["User-Agent"] = []string{""}
			}
			if who, ok := out.Context().Value(callerKey{}).(caller); ok {
				h["Impersonate-User"] = []string{who.user}
				h["Impersonate-Group"] = append(append([]string{}, who.groups...), "system:authenticated")
				h["Authorization"] = []string{proxyToken}
				return
			}
			out.URL.Path = relayBase + out.URL.Path
			out.URL.RawPath = ""
			if original != "" {
				h["Cluster-Proxy-Authorization"] = []string{original}
			}
			h["Authorization"] = []string{proxyToken}
			h["Cluster-Proxy-Relay-Authorization"] = []string{proxyToken}
			for i, name := range []string{"Cluster-Proxy-Proto", "Cluster-Proxy-Namespace", "Cluster-Proxy-Service", "Cluster-Proxy-Port"} {
				h[name] = []string{routing[i]}
			}
		},
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ns, svc := r.Header.Get("Cluster-Proxy-Namespace"), r.Header.Get("Cluster-Proxy-Service")
		if ns == "" || svc == "" {
			http.Error(w, "missing routing headers", http.StatusBadRequest)
			return
		}
		if strings.EqualFold(ns, "default") && strings.EqualFold(svc, "kubernetes") {
			auth := r.Header.Get("Authorization")
			if len(auth) < 8 || !strings.EqualFold(auth[:7], "bearer ") {
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
			entry, err := review(strings.TrimSpace(auth[7:]))
			if err != nil || !entry.ok {
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
			r = r.WithContext(context.WithValue(r.Context(), callerKey{}, caller{user: entry.user, groups: entry.groups}))
		}
		rp.ServeHTTP(w, r)
	})
	ln := loopbackListener(*listen)
	server := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	fatal("serve: %v", server.ServeTLS(ln, *cert, *key))
}
