"""Where state lives: blob stores (`blobs`), the metadata store (`meta`), the file service
that keeps the two in step (`files`), locks, cross-process cache invalidation (`changes`),
fsck/gc and the data mover (`mover`)."""
