package server

import (
	"errors"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/poolplane/poolplane/poolmgr"
)

// Resource name parts (AIP-122).
const (
	poolsPrefix   = "pools/"
	leasesInfix   = "/leases/"
	allPoolsName  = "pools/-" // ListLeases parent for every pool
	maxLeaseIDLen = 256
)

// poolName returns the resource name of pool id.
func poolName(id string) string { return poolsPrefix + id }

// leaseName returns the resource name of lease leaseID of pool id.
func leaseName(id, leaseID string) string { return poolsPrefix + id + leasesInfix + leaseID }

// parsePoolName parses the request field "name", "pools/{pool}", into the
// pool ID. The error is an InvalidArgument status naming the field.
func parsePoolName(name string) (string, error) {
	return parsePoolNameField("name", name)
}

// parsePoolNameField is parsePoolName for a field other than "name".
func parsePoolNameField(field, name string) (string, error) {
	if name == "" {
		return "", invalidArgument(field, "required, as pools/{pool}")
	}
	id, ok := strings.CutPrefix(name, poolsPrefix)
	if !ok {
		return "", invalidArgument(field, "must be pools/{pool}, got "+strconv.Quote(name))
	}
	if err := poolmgr.ValidatePoolID(id); err != nil {
		return "", invalidArgument(field, violationReason(err))
	}
	return id, nil
}

// parsePoolID checks a bare pool ID in field (CreatePoolRequest.pool_id).
func parsePoolID(field, id string) (string, error) {
	if id == "" {
		return "", invalidArgument(field, "required")
	}
	if err := poolmgr.ValidatePoolID(id); err != nil {
		return "", invalidArgument(field, violationReason(err))
	}
	return id, nil
}

// parseLeaseName parses "pools/{pool}/leases/{lease}" in field into the pool
// ID and the lease ID.
func parseLeaseName(field, name string) (poolID, leaseID string, err error) {
	if name == "" {
		return "", "", invalidArgument(field, "required, as pools/{pool}/leases/{lease}")
	}
	rest, ok := strings.CutPrefix(name, poolsPrefix)
	if !ok {
		return "", "", invalidArgument(field, "must be pools/{pool}/leases/{lease}, got "+strconv.Quote(name))
	}
	poolID, leaseID, ok = strings.Cut(rest, leasesInfix)
	if !ok {
		return "", "", invalidArgument(field, "must be pools/{pool}/leases/{lease}, got "+strconv.Quote(name))
	}
	if err := poolmgr.ValidatePoolID(poolID); err != nil {
		return "", "", invalidArgument(field, violationReason(err))
	}
	if err := validateLeaseID(leaseID); err != nil {
		return "", "", invalidArgument(field, err.Error())
	}
	return poolID, leaseID, nil
}

// validateLeaseID checks the {lease} segment: 1-256 lowercase letters,
// digits and hyphens.
func validateLeaseID(id string) error {
	if id == "" || len(id) > maxLeaseIDLen {
		return errors.New("lease id must be 1-256 characters")
	}
	for _, r := range id {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '-' {
			return errors.New("lease id must be lowercase letters, digits or hyphens, got " + strconv.Quote(id))
		}
	}
	return nil
}

// parseEtag parses an etag from field: `"<rev>"` as etagOf writes it (the
// quotes may be left out, as shells tend to). "" means no etag and yields 0.
func parseEtag(field, etag string) (int64, error) {
	if etag == "" {
		return 0, nil
	}
	s := etag
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		s = s[1 : len(s)-1]
	}
	rev, err := strconv.ParseInt(s, 10, 64)
	if err != nil || rev <= 0 {
		return 0, invalidArgument(field, "malformed etag "+strconv.Quote(etag)+": use the etag of a Pool as returned")
	}
	return rev, nil
}

// violationReason returns the reason of the first violation of a
// *poolmgr.ValidationError, or err's text.
func violationReason(err error) string {
	var verr *poolmgr.ValidationError
	if errors.As(err, &verr) && len(verr.Violations) > 0 {
		return verr.Violations[0].Reason
	}
	return err.Error()
}

// validateClientName checks Open.client_name, which ListLeases shows to
// operators and poolctl prints: at most 128 bytes of UTF-8, every
// character printable (unicode.IsPrint: letters, marks, numbers,
// punctuation, symbols and the ASCII space), so no control character
// (an escape sequence, a newline) or invisible formatting (a bidi
// override) reaches a terminal or a log line. Empty is allowed.
func validateClientName(name string) error {
	if len(name) > maxClientName {
		return errors.New("at most 128 bytes")
	}
	if !utf8.ValidString(name) {
		return errors.New("must be UTF-8")
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return errors.New("must be printable: no control or formatting character such as " + strconv.QuoteRune(r))
		}
	}
	return nil
}
