"""Music generation: a GRU learns polyphonic piano rolls from MIDI or JSON and writes new MIDI."""
