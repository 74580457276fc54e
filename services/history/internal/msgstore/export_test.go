package msgstore

// ClearEditsSQL is the statement that clears a deleted message's edits.
const ClearEditsSQL = clearEditsSQL

// Lookups returns how many batches were stored again with the lookup of
// their keys, because one of their messages had been stored before.
func (s *Store) Lookups() int64 { return s.lookups.Load() }
