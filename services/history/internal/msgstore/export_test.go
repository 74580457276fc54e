package msgstore

// ClearEditsSQL is the statement that clears a deleted message's edits.
const ClearEditsSQL = clearEditsSQL

// Lookups returns how many batches were stored again with the lookup of
// their keys: one of their messages had been stored before, or one of
// their changes would be rejected.
func (s *Store) Lookups() int64 { return s.lookups.Load() }
