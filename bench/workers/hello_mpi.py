"""Launch figure, OpenMPI: hello + one barrier + exit (`mpirun -np 8 python hello_mpi.py`)."""
from mpi4py import MPI

comm = MPI.COMM_WORLD
print(f"hello from rank {comm.Get_rank()}")
comm.Barrier()
