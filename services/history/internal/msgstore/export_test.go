package msgstore

// ClearEditsSQL is the statement that clears a deleted message's edits.
const ClearEditsSQL = clearEditsSQL
