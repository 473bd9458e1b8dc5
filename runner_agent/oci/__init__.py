"""OCI images: registry client, local image layouts, safe unpacking and the content-addressed cache."""
