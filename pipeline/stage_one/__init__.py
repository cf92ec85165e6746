"""Stage one, run once per (teacher, dataset): the teacher's embeddings in an HDF5 store, the FAISS
kNN search over them, and the hard pairs mined from it."""
