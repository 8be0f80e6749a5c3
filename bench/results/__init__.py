"""The result record's one home: its types and statuses (schema), and the one limited reader and
atomic writer of a results folder's files (store). Every command, executor and page reads and
writes results through this package; it imports neither bench.executing nor bench.running."""
