// Package image is kiln's OCI image store: it pulls, loads and pushes images
// (through go-containerregistry), keeps their blobs content-addressed on
// disk, tracks tags in a small JSON index, and turns an image's layers into
// one read-only root filesystem image that many VMs share.
//
// On-disk layout, under <root>/images:
//
//	blobs/sha256/<hex>     manifests, configs and layers exactly as served,
//	                       verified against their digest before they appear
//	rootfs/<hex>.sqfs      flattened root filesystem, one per image ID
//	rootfs/<hex>.lock      serialises builders of that rootfs
//	tmp/                   partial downloads and builds (same filesystem, so
//	                       completing one is a rename)
//	index.json             images and tags; replaced whole, temp-then-rename
//	index.lock             flock held while index.json is rewritten
//	gc.lock                flock: shared by anything that writes blobs or
//	                       rootfs builds, exclusive for Prune
//
// Registry credentials live in <root>/auth.json (docker config.json format,
// mode 0600).
package image
