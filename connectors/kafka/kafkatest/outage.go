// Package kafkatest helps tests put a kfake cluster through what a real
// one goes through.
package kafkatest

import (
	"fmt"
	"net"
	"sync"
	"time"
)

// Outage makes a kfake cluster's brokers unreachable the way a stopped
// broker is: connections refused, open ones cut. Give Listen to
// kfake.ListenFn; Down and Up then switch every broker off and on.
type Outage struct {
	mu  sync.Mutex
	lns []*listener
}

// Listen is a kfake.ListenFn.
func (o *Outage) Listen(network, address string) (net.Listener, error) {
	ln, err := net.Listen(network, address)
	if err != nil {
		return nil, err
	}
	l := &listener{network: network, addr: ln.Addr(), ln: ln, conns: make(map[*conn]bool), changed: make(chan struct{})}
	o.mu.Lock()
	o.lns = append(o.lns, l)
	o.mu.Unlock()
	return l, nil
}

// Down stops every broker listening and cuts the connections open; it
// returns how many it cut.
func (o *Outage) Down() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	cut := 0
	for _, l := range o.lns {
		cut += l.down()
	}
	return cut
}

// Up makes every broker listen again on its address.
func (o *Outage) Up() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, l := range o.lns {
		if err := l.up(); err != nil {
			return err
		}
	}
	return nil
}

// listener is one broker's: while down, Accept waits for Up.
type listener struct {
	network string
	addr    net.Addr

	mu      sync.Mutex
	ln      net.Listener // nil while down
	closed  bool
	conns   map[*conn]bool
	changed chan struct{} // closed and replaced on every change
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		ln, closed, changed := l.ln, l.closed, l.changed
		l.mu.Unlock()
		if closed {
			return nil, net.ErrClosed
		}
		if ln == nil {
			<-changed
			continue
		}
		c, err := ln.Accept()
		l.mu.Lock()
		if err != nil {
			stillUp := l.ln == ln && !l.closed
			l.mu.Unlock()
			if stillUp {
				return nil, err
			}
			continue // taken down (or closed) meanwhile
		}
		if l.ln != ln {
			l.mu.Unlock()
			c.Close()
			continue
		}
		tc := &conn{Conn: c, l: l}
		l.conns[tc] = true
		l.mu.Unlock()
		return tc, nil
	}
}

func (l *listener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	l.signal()
	if l.ln != nil {
		return l.ln.Close()
	}
	return nil
}

func (l *listener) Addr() net.Addr { return l.addr }

// signal wakes Accept; l.mu is held.
func (l *listener) signal() {
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *listener) down() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln == nil || l.closed {
		return 0
	}
	l.ln.Close()
	l.ln = nil
	cut := len(l.conns)
	for c := range l.conns {
		c.Conn.Close()
	}
	clear(l.conns)
	l.signal()
	return cut
}

func (l *listener) up() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln != nil || l.closed {
		return nil
	}
	var err error
	for range 50 { // the port may linger briefly after down
		var ln net.Listener
		if ln, err = net.Listen(l.network, l.addr.String()); err == nil {
			l.ln = ln
			l.signal()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("kafkatest: listen again on %s: %w", l.addr, err)
}

// conn is an accepted connection, forgotten by its listener once closed.
type conn struct {
	net.Conn
	l *listener
}

func (c *conn) Close() error {
	c.l.mu.Lock()
	delete(c.l.conns, c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}
