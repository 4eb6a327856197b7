// vcsim: the vSphere API simulator (vCenter or standalone ESX) that pycapstan's vSphere
// tests run against.
//
// Built offline in GOPATH mode against Debian's golang-github-vmware-govmomi-dev (govmomi
// 0.24.x), which ships the simulator library but not the upstream vcsim command. See build.sh
// and README.md beside this file.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmware/govmomi/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator" // REST (/rest, /api) endpoints
)

func main() {
	listen := flag.String("l", "127.0.0.1:8989", "listen address (port 0 picks a free port)")
	useTLS := flag.Bool("tls", true, "serve https")
	esx := flag.Bool("esx", false, "simulate a standalone ESX host instead of vCenter")
	user := flag.String("username", "", "required username (any is accepted if empty)")
	pass := flag.String("password", "", "required password (any is accepted if empty)")
	vms := flag.Int("vm", -1, "VMs per resource pool (-1: model default)")
	certFile := flag.String("tlscert", "", "PEM certificate (default: built-in 1024-bit test cert)")
	keyFile := flag.String("tlskey", "", "PEM private key for -tlscert")
	flag.Parse()

	model := simulator.VPX()
	if *esx {
		model = simulator.ESX()
	}
	if *vms >= 0 {
		model.Machine = *vms
	}
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}

	u := &url.URL{Host: *listen}
	if *user != "" {
		u.User = url.UserPassword(*user, *pass)
	}
	model.Service.Listen = u
	model.Service.RegisterEndpoints = true
	if *useTLS {
		model.Service.TLS = new(tls.Config)
		if *certFile != "" {
			c, err := tls.LoadX509KeyPair(*certFile, *keyFile)
			if err != nil {
				log.Fatal(err)
			}
			model.Service.TLS.Certificates = []tls.Certificate{c}
		}
	}

	s := model.Service.NewServer()
	fmt.Printf("export GOVC_URL=%s GOVC_SIM_PID=%d\n", s.URL, os.Getpid())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	s.Close()
	model.Remove() // deletes the temporary datastore directories
}
