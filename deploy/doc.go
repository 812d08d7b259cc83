// Package deploy holds poolplane's deployment kit and its tests: the
// container image builder (image/), Kubernetes manifests (kubernetes/) and a
// hardened systemd unit (systemd/). It is a Go module of its own so that its
// container and Kubernetes requirements stay out of the server's and the
// SDK's module graphs.
package deploy
