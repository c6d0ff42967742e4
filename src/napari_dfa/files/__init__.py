"""Files on disk (no Qt): where napari-dfa keeps things and how a slide is named (:mod:`.paths`),
and the one policy every command that writes follows (:mod:`.outputs`)."""
