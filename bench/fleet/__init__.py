"""The fleet simulator behind ``tollgate bench fleet``: the real Router on virtual time."""
