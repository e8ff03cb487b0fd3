package api

// TemplatePruneResponse answers POST /v1/templates/prune.
type TemplatePruneResponse struct {
	// Removed is how many templates were removed.
	Removed int `json:"removed"`
	// SpaceReclaimed is the bytes they took on the host.
	SpaceReclaimed int64 `json:"spaceReclaimed"`
}
