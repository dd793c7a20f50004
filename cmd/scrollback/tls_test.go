package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "scrollback-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	kb, _ := x509.MarshalECPrivateKey(key)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestTLS_HTTPAndNATS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	m := startMain(t, func(c *Config) {
		c.HTTP.TLS = TLSConfig{Cert: certFile, Key: keyFile}
		c.NATS.TLS = TLSConfig{Cert: certFile, Key: keyFile}
		c.NATS.Listen = "127.0.0.1:0"
	})
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := client.Get("https://" + m.HTTPAddr + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("https /health: %d", resp.StatusCode)
	}
	if resp, err := http.Get("http://" + m.HTTPAddr + "/health"); err == nil && resp.StatusCode == 200 {
		t.Fatal("plain HTTP answered on the TLS listener")
	}
	nc, err := nats.Connect(m.NATSServer.ClientURL(), nats.Secure(&tls.Config{RootCAs: pool}))
	if err != nil {
		t.Fatalf("NATS over TLS: %v", err)
	}
	nc.Close()
	if nc, err := nats.Connect(m.NATSServer.ClientURL()); err == nil {
		nc.Close()
		t.Fatal("a NATS client without TLS was accepted")
	}
}

// TestTLS_AMissingCertFailsTheStart: an HTTP certificate that cannot be
// loaded (a typo, an unreadable file after a rotation) fails the start
// with its error, and the service stops. It hung for ever in Close,
// waiting for an HTTP server it never started, with the error unprinted
// and SIGTERM ignored (found by a helper's operator walkthrough).
func TestTLS_AMissingCertFailsTheStart(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ServerName = "test"
	cfg.DataDir = filepath.Join(t.TempDir(), "data")
	cfg.NATS.Listen = ""
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.HTTP.TLS = TLSConfig{Cert: "/nonexistent.pem", Key: "/nonexistent.key"}
	m := &Main{Config: cfg}
	err := m.Open(t.Context())
	if err == nil || !strings.Contains(err.Error(), "http TLS") || !strings.Contains(err.Error(), "/nonexistent.pem") {
		t.Fatalf("Open = %v, want the certificate's error", err)
	}
	closed := make(chan error, 1)
	go func() { closed <- m.Close() }()
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("Close hangs after a failed start")
	}
}
