"""``mlff-export bench``: every available backend on the same structures, in one process.

:mod:`.workloads` builds the structures, :mod:`.cases` the backends to compare, :mod:`.timing`
measures, :mod:`.suite` runs a suite and :mod:`.report` writes JSON, Markdown and plots.
"""
