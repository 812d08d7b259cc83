package http1

// pstate is where a framer stands in its stream.
type pstate uint8

const (
	sStart pstate = iota // at a message boundary

	// The start line and header fields (or trailer fields), bounded by
	// maxHeader together.
	sMethod    // request method
	sTarget    // request target
	sVersion   // HTTP-version (request: last; response: first)
	sStatus    // status code
	sStatusEnd // after the status code: SP or CR
	sReason    // reason phrase
	sStartLF   // LF ending the start line
	sLineStart // the start of a field line, or CR ending the block
	sName      // field name
	sValue     // field value
	sValueLF   // LF ending a field line
	sEndLF     // LF ending the block

	// A chunk-size line, bounded by maxChunkLine.
	sChunkSize // hex digits
	sChunkWS   // whitespace after them
	sChunkExt  // chunk extensions
	sChunkLF   // LF ending the line

	sChunkData   // chunk data, skipped in bulk
	sChunkDataCR // CR after chunk data
	sChunkDataLF // LF after chunk data
	sBody        // a Content-Length body, skipped in bulk
	sDead        // the stream cannot be followed further; err says why

	sHeaderLast = sEndLF // the last state bounded by maxHeader
)

// hkind is a header field the framer acts on.
type hkind uint8

const (
	hOther hkind = iota
	hContentLength
	hTransferEncoding
	hConnection
	hUpgrade
)

// parser frames one direction's HTTP/1.1 messages. Its zero value with
// isReq and q set stands at the start of a stream.
type parser struct {
	isReq bool
	q     *queue
	st    pstate
	err   error // why the stream cannot be followed; st is sDead
	n     int   // bytes of the current header block or chunk-size line

	// The message's start line.
	word    [8]byte // the method (request) being read
	wordLen int
	minor   byte  // HTTP/1.minor
	flags   uint8 // request: the request's flags; response: those of the request it answers
	status  int
	digits  int
	trailer bool // reading the trailer fields of a chunked body

	// The field being read.
	name    [len("transfer-encoding")]byte
	nameLen int
	kind    hkind
	clPhase uint8 // Content-Length value: 0 leading OWS, 1 digits, 2 trailing OWS
	clDigit int
	tok     [16]byte // the list element being read, lowercased
	tokLen  int
	tokPart uint8 // 0 before the element, 1 in it, 2 in whitespace after it
	tokJunk bool  // the element is no token the framer acts on

	// What the header fields said.
	cl        int64
	clSeen    bool
	teSeen    bool
	chunked   bool // the last transfer coding is chunked
	teBad     bool // a coding followed chunked
	closeTok  bool // Connection: close
	keepAlive bool // Connection: keep-alive
	upgrade   bool // an Upgrade field

	remain int64 // body or chunk bytes still due

	messages   int // messages completed, interim responses included
	lastStatus int // the status of the last final response completed
}

// feed follows b. It never keeps b.
func (p *parser) feed(b []byte) {
	for i := 0; i < len(b); {
		switch p.st {
		case sDead:
			return
		case sBody, sChunkData:
			k := int64(len(b) - i)
			if k > p.remain {
				k = p.remain
			}
			i += int(k)
			p.remain -= k
			if p.remain == 0 {
				if p.st == sBody {
					p.done()
				} else {
					p.st = sChunkDataCR
				}
			}
			continue
		case sName:
			j := i
			for j < len(b) && tchar[b[j]] {
				p.nameByte(b[j])
				j++
			}
			if j == i {
				break
			}
			if p.n += j - i; p.n > maxHeader {
				p.fail(errHeaderTooLong)
				return
			}
			i = j
			continue
		case sValue, sReason, sTarget:
			// Runs of bytes the framer only checks and counts.
			if p.st == sValue && p.kind != hOther && p.kind != hUpgrade {
				break
			}
			j := i
			for j < len(b) && fieldByte[b[j]] {
				j++
			}
			if j == i {
				break
			}
			if p.n += j - i; p.n > maxHeader {
				p.fail(errHeaderTooLong)
				return
			}
			if p.st == sTarget {
				p.wordLen = 1 // the target is not empty
			}
			i = j
			continue
		}
		p.step(b[i])
		i++
	}
}

func (p *parser) fail(err error) {
	p.err = err
	p.st = sDead
}

// begin starts a message at its first byte.
func (p *parser) begin() {
	*p = parser{isReq: p.isReq, q: p.q, messages: p.messages, lastStatus: p.lastStatus}
}

// step follows one byte outside bodies.
func (p *parser) step(c byte) {
	if p.st == sStart {
		p.begin()
	}
	if p.st <= sHeaderLast {
		p.n++
		if p.n > maxHeader {
			p.fail(errHeaderTooLong)
			return
		}
	} else if p.st <= sChunkLF {
		p.n++
		if p.n > maxChunkLine {
			p.fail(errChunkLine)
			return
		}
	}
	switch p.st {
	case sStart:
		if p.isReq {
			p.st = sMethod
			p.method(c)
			return
		}
		f, ok := p.q.peek()
		if !ok {
			p.fail(errUnsolicited)
			return
		}
		p.flags = f
		p.st = sVersion
		p.version(c)

	case sMethod:
		p.method(c)
	case sTarget:
		switch {
		case c == ' ' && p.wordLen > 0:
			p.st = sVersion
			p.wordLen = 0
		case c <= ' ' || c == 0x7f:
			p.fail(errMalformed)
		default:
			p.wordLen = 1 // the target is not empty
		}
	case sVersion:
		p.version(c)
	case sStatus:
		if c < '0' || c > '9' || (p.digits == 0 && c == '0') {
			p.fail(errMalformed)
			return
		}
		p.status = p.status*10 + int(c-'0')
		if p.digits++; p.digits == 3 {
			p.st = sStatusEnd
		}
	case sStatusEnd:
		switch c {
		case ' ':
			p.st = sReason
		case '\r':
			p.st = sStartLF
		default:
			p.fail(errMalformed)
		}
	case sReason:
		switch {
		case c == '\r':
			p.st = sStartLF
		case isCTL(c) && c != '\t':
			p.fail(errMalformed)
		}
	case sStartLF:
		if c != '\n' {
			p.fail(errMalformed)
			return
		}
		if p.isReq && !p.q.push(p.flags) {
			p.fail(errPipeline)
			return
		}
		p.st = sLineStart

	case sLineStart:
		switch {
		case c == '\r':
			p.st = sEndLF
		case tchar[c]:
			p.nameLen = 0
			p.nameByte(c)
			p.st = sName
		default: // obs-fold included
			p.fail(errMalformed)
		}
	case sName:
		switch {
		case tchar[c]:
			p.nameByte(c)
		case c == ':':
			p.beginValue()
		default:
			p.fail(errMalformed)
		}
	case sValue:
		switch {
		case c == '\r':
			p.st = sValueLF
		case isCTL(c) && c != '\t':
			p.fail(errMalformed)
		default:
			p.value(c)
		}
	case sValueLF:
		if c != '\n' {
			p.fail(errMalformed)
			return
		}
		p.endValue()
		if p.st != sDead {
			p.st = sLineStart
		}
	case sEndLF:
		switch {
		case c != '\n':
			p.fail(errMalformed)
		case p.trailer:
			p.done()
		case p.isReq:
			p.requestHeaders()
		default:
			p.responseHeaders()
		}

	case sChunkSize:
		if d, ok := unhex(c); ok {
			if p.digits++; p.digits > maxChunkDigits {
				p.fail(errMalformed)
				return
			}
			p.remain = p.remain<<4 | int64(d)
			return
		}
		if p.digits == 0 {
			p.fail(errMalformed)
			return
		}
		p.chunkSizeEnd(c)
	case sChunkWS:
		p.chunkSizeEnd(c)
	case sChunkExt:
		switch {
		case c == '\r':
			p.st = sChunkLF
		case isCTL(c) && c != '\t':
			p.fail(errMalformed)
		}
	case sChunkLF:
		switch {
		case c != '\n':
			p.fail(errMalformed)
		case p.remain == 0: // the last chunk: trailer fields follow
			p.trailer = true
			p.n = 0
			p.st = sLineStart
		default:
			p.st = sChunkData
		}
	case sChunkDataCR:
		if c != '\r' {
			p.fail(errMalformed)
			return
		}
		p.st = sChunkDataLF
	case sChunkDataLF:
		if c != '\n' {
			p.fail(errMalformed)
			return
		}
		p.n, p.digits, p.remain = 0, 0, 0
		p.st = sChunkSize
	}
}

func (p *parser) method(c byte) {
	switch {
	case tchar[c]:
		if p.wordLen < len(p.word) {
			p.word[p.wordLen] = c
		}
		p.wordLen++
	case c == ' ' && p.wordLen > 0:
		switch m := p.word[:min(p.wordLen, len(p.word))]; {
		case p.wordLen > len(p.word):
		case string(m) == "HEAD":
			p.flags |= fHead
		case string(m) == "CONNECT":
			p.flags |= fConnect
		}
		p.wordLen = 0
		p.st = sTarget
	default:
		p.fail(errMalformed)
	}
}

// version reads "HTTP/1.0" or "HTTP/1.1" and the byte after it.
func (p *parser) version(c byte) {
	const proto = "HTTP/1."
	switch {
	case p.wordLen < len(proto):
		if c != proto[p.wordLen] {
			p.fail(errMalformed)
			return
		}
		p.wordLen++
	case p.wordLen == len(proto):
		if c != '0' && c != '1' {
			p.fail(errMalformed)
			return
		}
		p.minor = c - '0'
		p.wordLen++
	case p.isReq && c == '\r':
		p.st = sStartLF
	case !p.isReq && c == ' ':
		p.st = sStatus
	default:
		p.fail(errMalformed)
	}
}

func (p *parser) nameByte(c byte) {
	if p.nameLen < len(p.name) {
		p.name[p.nameLen] = lower(c)
	}
	p.nameLen++
}

func (p *parser) beginValue() {
	p.st = sValue
	p.kind = hOther
	if p.trailer || p.nameLen > len(p.name) {
		return
	}
	switch string(p.name[:p.nameLen]) {
	case "content-length":
		if p.clSeen {
			p.fail(errDupLength)
			return
		}
		p.kind, p.clSeen, p.clPhase, p.clDigit = hContentLength, true, 0, 0
	case "transfer-encoding":
		if p.minor == 0 {
			p.fail(errTE10)
			return
		}
		p.kind, p.teSeen = hTransferEncoding, true
	case "connection":
		p.kind = hConnection
	case "upgrade":
		p.kind, p.upgrade = hUpgrade, true
	}
	p.tokLen, p.tokPart, p.tokJunk = 0, 0, false
}

func (p *parser) value(c byte) {
	switch p.kind {
	case hContentLength:
		ws := c == ' ' || c == '\t'
		digit := c >= '0' && c <= '9'
		switch {
		case ws && p.clPhase != 1:
		case ws:
			p.clPhase = 2
		case digit && p.clPhase < 2:
			if p.clDigit++; p.clDigit > maxCLDigits {
				p.fail(errMalformed)
				return
			}
			p.clPhase = 1
			p.cl = p.cl*10 + int64(c-'0')
		default:
			p.fail(errMalformed)
		}
	case hTransferEncoding, hConnection:
		switch {
		case c == ',':
			p.endToken()
		case c == ' ' || c == '\t':
			if p.tokPart == 1 {
				p.tokPart = 2
			}
		case p.tokPart == 2 || p.tokLen == len(p.tok):
			p.tokJunk = true
		default:
			p.tokPart = 1
			p.tok[p.tokLen] = lower(c)
			p.tokLen++
		}
	}
}

func (p *parser) endValue() {
	switch p.kind {
	case hContentLength:
		if p.clDigit == 0 {
			p.fail(errMalformed)
		}
	case hTransferEncoding, hConnection:
		p.endToken()
	}
}

// endToken acts on a list element of Transfer-Encoding or Connection.
func (p *parser) endToken() {
	if p.tokLen == 0 && !p.tokJunk {
		p.tokPart = 0
		return // an empty list element
	}
	t := p.tok[:p.tokLen]
	if p.tokJunk {
		t = nil
	}
	switch p.kind {
	case hTransferEncoding:
		if p.chunked {
			p.teBad = true
		}
		p.chunked = string(t) == "chunked"
	case hConnection:
		switch string(t) {
		case "close":
			p.closeTok = true
		case "keep-alive":
			p.keepAlive = true
		}
	}
	p.tokLen, p.tokPart, p.tokJunk = 0, 0, false
}

func (p *parser) chunkSizeEnd(c byte) {
	switch c {
	case ' ', '\t':
		p.st = sChunkWS
	case ';':
		p.st = sChunkExt
	case '\r':
		p.st = sChunkLF
	default:
		p.fail(errMalformed)
	}
}

// bodyFraming sets the body after the header fields from Content-Length
// or Transfer-Encoding; noLength is what a message with neither means.
func (p *parser) bodyFraming(noLength error) {
	switch {
	case p.teSeen && p.clSeen:
		p.fail(errLengthAndTE)
	case p.teSeen && (!p.chunked || p.teBad):
		p.fail(errTE)
	case p.teSeen:
		p.n, p.digits, p.remain = 0, 0, 0
		p.st = sChunkSize
	case p.clSeen && p.cl > 0:
		p.remain = p.cl
		p.st = sBody
	case p.clSeen || noLength == nil:
		p.done()
	default:
		p.fail(noLength)
	}
}

func (p *parser) requestHeaders() {
	switch {
	case p.flags&fConnect != 0:
		p.fail(errConnect)
	case p.upgrade:
		p.fail(errUpgrade)
	case p.closeTok || (p.minor == 0 && !p.keepAlive):
		p.fail(errCloseReq)
	default:
		p.bodyFraming(nil)
	}
}

// responseHeaders frames a response's body per RFC 9112 §6.3.
func (p *parser) responseHeaders() {
	switch {
	case p.status == 101:
		p.fail(errSwitched)
	case p.closeTok || (p.minor == 0 && !p.keepAlive):
		p.fail(errCloseResp)
	case p.status < 200: // interim: the request waits for its final response
		p.messages++
		p.st = sStart
	case p.teSeen && p.clSeen:
		p.fail(errLengthAndTE)
	case p.flags&fHead != 0 || p.status == 204 || p.status == 304:
		p.done()
	case p.flags&fConnect != 0 && p.status < 300:
		p.fail(errTunnel)
	default:
		p.bodyFraming(errCloseBody)
	}
}

// done ends a message: a request, or a final response.
func (p *parser) done() {
	p.st = sStart
	p.messages++
	if !p.isReq {
		p.q.pop()
		p.lastStatus = p.status
	}
}

func isCTL(c byte) bool { return c < ' ' || c == 0x7f }

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// fieldByte reports the bytes a field value, a reason phrase or a request
// target may hold and that need no further look: not SP (which ends a
// target), not CR, and no other control byte but HTAB. A target's HTAB is
// left to step, which rejects it.
var fieldByte = func() (t [256]bool) {
	for c := range 256 {
		t[c] = c > ' ' && c != 0x7f
	}
	return t
}()

// tchar reports the token characters of RFC 9110 §5.6.2.
var tchar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()
