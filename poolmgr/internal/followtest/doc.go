// Package followtest holds the tests of poolmgr's follow loop against a
// real embedded etcd: several Managers sharing one configuration. It is a
// separate package so that poolmgr's own test binary does not link the
// etcd server.
package followtest
