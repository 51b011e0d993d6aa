"""3-D shapes as point clouds: procedural and real data, classifiers, rewards and ShapeNet metrics."""
