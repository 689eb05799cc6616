"""The course's data: bundled or generated on the fly, never downloaded.

==========  =============================================================  =============
module      what                                                           book
==========  =============================================================  =============
``toys``    2-D toys: two moons, swiss roll, 8 Gaussians, checkerboard     §1.1, §2.1
``digits``  scikit-learn's bundled 8x8 digits, fixed train/held-out split  §3
``shapes``  coloured shapes with captions and attributes                   §5
``video``   a shape bouncing around, as clips with captions                §8
``mnist``   a reader for MNIST IDX files you place in a local folder       §3 (optional)
==========  =============================================================  =============

"""
from .digits import digits_dataset, digits_split_indices, load_digits
from .mnist import load_mnist, read_idx
from .shapes import ShapesDataset, make_shapes, tokenize, VOCAB
from .toys import TOYS, sample_toy
from .video import MovingShapesDataset, make_moving_shapes

__all__ = [
    "TOYS", "sample_toy",
    "load_digits", "digits_split_indices", "digits_dataset",
    "ShapesDataset", "make_shapes", "tokenize", "VOCAB",
    "MovingShapesDataset", "make_moving_shapes",
    "load_mnist", "read_idx",
]
